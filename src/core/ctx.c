/* ctx.c — the engine context (last error, log handler). The error tables
 * (decomp_strerror and friends) live in src/common/errors.c, which
 * libdecomp links whole and exports. */
#include <stdio.h>
#include <stdlib.h>

#include "core.h"

struct decomp_ctx {
  int err;                /* code of the last failure */
  char msg[1024];         /* its detailed message */
  decomp_log_fn log;      /* may be NULL */
  void *log_user;
  int log_level;          /* messages above this level are dropped */
  double interval;        /* seconds between WORKING progress events */
  core_tick_fn tick;      /* set by decompose.c around a long step */
  void *tick_user;
  double tick_base, tick_scale; /* core_tick's span within the step */
};

decomp_ctx *decomp_ctx_new(void) {
  decomp_ctx *ctx = calloc(1, sizeof *ctx);
  if (ctx) {
    ctx->log_level = -1;
    ctx->interval = 0.5;
    ctx->tick_scale = 1;
  }
  return ctx;
}

void decomp_ctx_set_progress_interval(decomp_ctx *ctx, double seconds) {
  if (ctx)
    ctx->interval = seconds >= 0 ? seconds : 0;
}

double core_progress_interval(const decomp_ctx *ctx) {
  return ctx ? ctx->interval : 0.5;
}

void core_set_tick(decomp_ctx *ctx, core_tick_fn fn, void *user) {
  if (!ctx)
    return;
  ctx->tick = fn;
  ctx->tick_user = user;
  ctx->tick_base = 0;
  ctx->tick_scale = 1;
}

void core_tick_span(decomp_ctx *ctx, double base, double scale) {
  if (!ctx)
    return;
  ctx->tick_base = base;
  ctx->tick_scale = scale;
}

int core_tick(decomp_ctx *ctx, double fraction) {
  if (!ctx || !ctx->tick)
    return DECOMP_OK;
  fraction = fraction < 0 ? 0 : fraction > 1 ? 1 : fraction;
  return ctx->tick(ctx->tick_user, ctx->tick_base + ctx->tick_scale * fraction);
}

void decomp_ctx_free(decomp_ctx *ctx) { free(ctx); }

void decomp_ctx_set_log(decomp_ctx *ctx, decomp_log_fn fn, void *user,
                        int max_level) {
  ctx->log = fn;
  ctx->log_user = user;
  ctx->log_level = fn ? max_level : -1;
}

const char *decomp_errmsg(const decomp_ctx *ctx) {
  return ctx ? ctx->msg : "";
}

int decomp_errcode(const decomp_ctx *ctx) { return ctx ? ctx->err : 0; }

void decomp_free(void *p) { free(p); }

int core_fail(decomp_ctx *ctx, int err, const char *fmt, ...) {
  if (!ctx)
    return err;
  ctx->err = err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->msg, sizeof ctx->msg, fmt, ap);
  va_end(ap);
  return err;
}

int decomp_ctx_fail(decomp_ctx *ctx, int err, const char *fmt, ...) {
  if (!ctx)
    return err;
  ctx->err = err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ctx->msg, sizeof ctx->msg, fmt, ap);
  va_end(ap);
  return err;
}

void decomp_ctx_clear(decomp_ctx *ctx) { core_clear(ctx); }

void core_clear(decomp_ctx *ctx) {
  if (ctx) {
    ctx->err = 0;
    ctx->msg[0] = '\0';
  }
}

bool core_log_enabled(const decomp_ctx *ctx, int level) {
  return ctx && ctx->log && level <= ctx->log_level;
}

void core_log(decomp_ctx *ctx, int level, const char *topic, const char *fmt,
              ...) {
  if (!core_log_enabled(ctx, level))
    return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  ctx->log(ctx->log_user, level, topic, line);
}
