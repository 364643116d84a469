/* run.h — one decomposition run in stages, shared by decompose.c (which
 * owns it: decomp_decompose, decomp_decompose_save) and task.c (the same
 * run cut into tasks for several machines: decomp_task_*). Private to the
 * engine.
 *
 * A run is opened over the whole spec (eligibility, candidates, cost models:
 * cheap, no SVD, the same on every machine), then its stages run in order:
 * phase 1 (spectra) on the selected layers, the views and the policy's
 * choice (or a plan's decisions put in their place), the decisions applied,
 * phase 2 (factors) on the selected layers, the info file. Whatever subset
 * a stage runs on, each layer's arithmetic is the single run's: it depends
 * on the layer's input, the policy and its BLAS thread count only. */
#ifndef DECOMP_RUN_H
#define DECOMP_RUN_H

#include <pthread.h>

#include "svd.h"

struct layer {
  core_info_layer info;     /* what info.c reads */
  char why[160];            /* reason when left alone by eligibility */
  size_t conv_index;        /* among the spec's Conv2d layers */
  bool candidate;           /* eligible and decomposable: goes to choose */
  double seconds;           /* time spent on it (both phases) */
  const decomp_tensor *weight, *bias;
  const decomp_tensor *gram; /* its calibration's Gram, or NULL */
  const decomp_weights *src, *calib_src; /* the sets they live in */
  /* Streamed output (decomp_decompose_save): where the factors go as soon
   * as the layer is done (items out_item, out_item + 1), or NULL. */
  core_st_out *out;
  size_t out_item;
  /* Its candidate decompositions (a k×k conv: spatial and channel) and
   * each one's spectrum from phase 1; the policy picks one. */
  core_layer_view cand[2];
  core_factors cfac[2];
  int ncand;
  /* The chosen candidate's spectrum, then factors (owned until the factors
   * move into the result); info.sigma points into it. */
  core_factors fac;
  core_svd_report rep;      /* how its SVD ran (phase 2) */
  /* The job of the current phase (run_phase): */
  bool job;                 /* has work in this phase */
  bool job_sigma;           /* phase 1: compute the spectrum */
  bool job_event;           /* phase 1: report DECOMP_PHASE_SPECTRUM */
  int64_t job_rank;         /* phase 2: the rank */
  bool heavy;               /* runs alone, with every BLAS thread */
  bool off;                 /* phase 2 runs it elsewhere (another task):
                               not reported here */
  int state;                /* JOB_* (under the pool's lock) */
  int rc;                   /* the job's result */
  char *err;                /* its message, when it failed on a worker */
};

struct pool {
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  struct layer **queue;     /* FIFO of layers to run */
  size_t head, tail;
  size_t busy;              /* queued or running */
  bool quit;
  int phase;                /* 1 or 2 */
  const decomp_policy *policy;
  pthread_t *th;
  int nth, started;
};

struct by_name {
  const char *name;
  struct layer *L;
};

/* A run (see the file's comment). Fields are the stages' state; task.c
 * reads the layers and fills what a task record carries. */
struct run {
  decomp_ctx *ctx;
  const decomp_weights *w;
  const decomp_spec *spec;
  const decomp_policy *policy;
  const decomp_options *opts;
  size_t n;                 /* layers of the spec */
  size_t total;             /* layers considered (progress's total) */
  struct layer *Ls;         /* one per spec layer, in spec order */
  core_calib *calib;
  core_profile *prof;
  struct pool pool, *P;     /* P: the pool when threads ≥ 2 */
  int threads, blas_saved;
  double t_run;
  /* core_run_views: every candidate of every layer side by side, what the
   * budget counts of the others, the model's time outside the layers. */
  core_layer_view *views;
  core_rank_decision *dec;
  size_t nviews;
  core_rest rest;
  double other;
  /* core_run_apply: the decomposed layers by name. */
  struct by_name *idx;
  size_t ndec;
};

/* Open a run: check the spec against the weights, open the calibration and
 * the profile, start the pool, and prepare every layer; phase 1 will work
 * on the candidate layers i with sel[i] (sel NULL: all). On failure the run
 * is closed. */
int core_run_open(struct run *R, decomp_ctx *ctx, const decomp_weights *w,
                  const decomp_spec *spec, const decomp_policy *policy,
                  const decomp_options *opts, const bool *sel);
/* Run phase 1 or 2 over the layers that have a job in it. */
int core_run_phase(struct run *R, int phase);
/* The policy's inputs from phase 1's results: views, dec (zeroed), rest,
 * other. */
int core_run_views(struct run *R);
/* The policy's choice into R->dec. */
int core_run_choose(struct run *R);
/* Apply R->dec: each candidate layer's chosen candidate, rank or reason;
 * phase 2 will work on the decomposed layers i with sel[i] (NULL: all);
 * R->idx lists the decomposed layers by name. */
int core_run_apply(struct run *R, const bool *sel);
/* Candidate c of layer L takes the spectrum `f` (phase 1's result, or a
 * record's in its place): owned by the layer from now, the view's groups,
 * energy and sigma pointing into it. */
void core_run_set_spectrum(struct layer *L, int c, core_factors *f);
/* After core_run_apply: report (log, progress DONE) every considered
 * layer left alone, as phase 2 does in spec order among the others; for a
 * plan, whose factors tasks have only the decomposed layers. */
int core_run_report_left_alone(struct run *R);
/* decompose_info.json for the run (peak_rss_bytes > 0: recorded). */
int core_run_info(struct run *R, int64_t peak_rss_bytes, char **out);
/* Open the streamed output of decomp_decompose_save for the applied run:
 * the files planned, the tensors that pass through copied; each decomposed
 * layer's factors go to items L->out_item, L->out_item + 1 of *out. */
int core_run_stream_open(struct run *R, const char *dir,
                         const decomp_save_options *save, core_st_out **out,
                         char ***names);
/* The shapes of a layer's two new weights at rank `rank` for its chosen
 * view (info.view), and their rank (4 or 2). */
void core_run_factor_shapes(const struct layer *L, int64_t rank, int *ndim,
                            int64_t s0[4], int64_t s1[4]);
void core_run_close(struct run *R);

#endif
