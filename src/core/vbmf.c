/* vbmf.c — the empirical variational Bayes rank of a matrix from its
 * singular values (EVBMF: Nakajima, Sugiyama, Babacan, Tomioka, "Global
 * analytic solution of fully-observed variational Bayesian matrix
 * factorization", JMLR 14, 2013), with the noise variance unknown.
 *
 * For an L×M matrix (L ≤ M, α = L/M) the VB solution keeps exactly the
 * singular values above √(M·σ²·x̄), x̄ = (1+τ̄)(1+α/τ̄), τ̄ ≈ 2.5129·√α. The
 * noise variance σ² is the minimizer of the free energy
 *
 *   F(σ²) = Σ_{x_h ≤ x̄} (x_h − log x_h)
 *         + Σ_{x_h > x̄} (x_h − τ_h + log((τ_h+1)/x_h) + α·log(τ_h/α + 1))
 *         + residual/(M·σ²) + (L − H)·log σ²,      x_h = γ_h²/(M·σ²),
 *   τ(x) = ½(x − (1+α) + √((x − (1+α))² − 4α)),
 *
 * over the interval the paper bounds it to: from max(γ²_{h̄}/(M·x̄),
 * mean_{h ≥ h̄} γ_h²/M) (h̄ = ⌈L/(1+α)⌉ − 1, 0-based) up to ‖Y‖²/(L·M).
 *
 * The reference tool and the widely used Python ports minimize F with
 * SciPy's bounded Brent method (`minimize_scalar(method='Bounded')`, its
 * default absolute tolerance 1e-5 on σ²). That tolerance is coarse next to
 * the σ² of real conv kernels, so the rank it reports depends on the exact
 * sequence of trial points; we follow the same golden-section/parabolic
 * steps and stopping rule, so that the same singular values give the same
 * rank as the reference. */
#include <math.h>
#include <stdlib.h>

#include "core.h"

#define VBMF_TAU_BAR 2.5129

static double tau_of(double x, double alpha) {
  double t = x - (1.0 + alpha);
  return 0.5 * (t + sqrt(t * t - 4.0 * alpha));
}

struct evb {
  const double *s; /* H singular values, descending */
  int64_t H;
  double L, M, alpha, xubar, residual;
};

static double evb_objective(const struct evb *e, double sigma2) {
  double t1 = 0, t2 = 0, t3 = 0, t4 = 0;
  for (int64_t h = 0; h < e->H; h++) {
    double x = e->s[h] * e->s[h] / (e->M * sigma2);
    if (x > e->xubar) {
      double tz = tau_of(x, e->alpha);
      t2 += x - tz;
      t3 += log((tz + 1.0) / x);
      t4 += log(tz / e->alpha + 1.0);
    } else {
      t1 += x - log(x);
    }
  }
  return t1 + t2 + t3 + e->alpha * t4 + e->residual / (e->M * sigma2) +
         (e->L - (double)e->H) * log(sigma2);
}

static double sign_of(double v) { return (v > 0) - (v < 0); }

/* Bounded Brent minimization (golden section with parabolic steps) with
 * SciPy's rules: start at the golden point, tol1 = √ε·|x| + xatol/3, stop
 * when |x − m| ≤ 2·tol1 − (b − a)/2 or after 500 evaluations. */
static double fminbound(const struct evb *e, double a, double b) {
  const double xatol = 1e-5, sqrt_eps = sqrt(2.2e-16);
  const double golden_mean = 0.5 * (3.0 - sqrt(5.0));
  const int maxfun = 500;
  double fulc = a + golden_mean * (b - a);
  double nfc = fulc, xf = fulc;
  double rat = 0.0, ee = 0.0;
  double x = xf;
  double fx = evb_objective(e, x);
  int num = 1;
  double ffulc = fx, fnfc = fx;
  double xm = 0.5 * (a + b);
  double tol1 = sqrt_eps * fabs(xf) + xatol / 3.0;
  double tol2 = 2.0 * tol1;
  while (fabs(xf - xm) > (tol2 - 0.5 * (b - a))) {
    bool golden = true;
    if (fabs(ee) > tol1) {
      golden = false;
      double r = (xf - nfc) * (fx - ffulc);
      double q = (xf - fulc) * (fx - fnfc);
      double p = (xf - fulc) * q - (xf - nfc) * r;
      q = 2.0 * (q - r);
      if (q > 0.0)
        p = -p;
      q = fabs(q);
      r = ee;
      ee = rat;
      if (fabs(p) < fabs(0.5 * q * r) && p > q * (a - xf) &&
          p < q * (b - xf)) {
        rat = (p + 0.0) / q;
        x = xf + rat;
        if ((x - a) < tol2 || (b - x) < tol2) {
          double si = sign_of(xm - xf) + ((xm - xf) == 0);
          rat = tol1 * si;
        }
      } else {
        golden = true;
      }
    }
    if (golden) {
      ee = xf >= xm ? a - xf : b - xf;
      rat = golden_mean * ee;
    }
    double si = sign_of(rat) + (rat == 0);
    x = xf + si * fmax(fabs(rat), tol1);
    double fu = evb_objective(e, x);
    num++;
    if (fu <= fx) {
      if (x >= xf)
        a = xf;
      else
        b = xf;
      fulc = nfc;
      ffulc = fnfc;
      nfc = xf;
      fnfc = fx;
      xf = x;
      fx = fu;
    } else {
      if (x < xf)
        a = x;
      else
        b = x;
      if (fu <= fnfc || nfc == xf) {
        fulc = nfc;
        ffulc = fnfc;
        nfc = x;
        fnfc = fu;
      } else if (fu <= ffulc || fulc == xf || fulc == nfc) {
        fulc = x;
        ffulc = fu;
      }
    }
    xm = 0.5 * (a + b);
    tol1 = sqrt_eps * fabs(xf) + xatol / 3.0;
    tol2 = 2.0 * tol1;
    if (num >= maxfun)
      break;
  }
  return xf;
}

int64_t core_evbmf_rank(const double *s, int64_t n, int64_t rows, int64_t cols,
                        double *out_sigma2) {
  int64_t L = rows < cols ? rows : cols;
  int64_t M = rows < cols ? cols : rows;
  if (out_sigma2)
    *out_sigma2 = 0;
  if (n <= 0 || L <= 0)
    return 0;
  int64_t H = n < L ? n : L;
  struct evb e = {.s = s, .H = H, .L = (double)L, .M = (double)M};
  e.alpha = e.L / e.M;
  double tauubar = VBMF_TAU_BAR * sqrt(e.alpha);
  e.xubar = (1.0 + tauubar) * (1.0 + e.alpha / tauubar);
  double s2sum = 0;
  for (int64_t h = 0; h < H; h++)
    s2sum += s[h] * s[h];
  /* With fewer than L values given the rest of ‖Y‖² is unknown: taken as 0,
   * which is exact for the full spectra the engine passes. */
  e.residual = 0;
  double upper = (s2sum + e.residual) / (e.L * e.M);
  if (!(upper > 0) || !isfinite(upper))
    return 0; /* a zero (or non-finite) matrix: nothing above the noise */
  int64_t ub = (int64_t)ceil(e.L / (1.0 + e.alpha)) - 1;
  if (ub > H)
    ub = H;
  int64_t k = ub; /* eH_ub + 1, 0-based index of the first "noise" value */
  if (k < 0)
    k = 0;
  if (k > H - 1)
    k = H - 1;
  double tail = 0;
  for (int64_t h = k; h < H; h++)
    tail += s[h] * s[h];
  double lower = fmax(s[k] * s[k] / (e.M * e.xubar), tail / (double)(H - k) / e.M);
  if (lower > upper)
    lower = upper;
  double sigma2 = fminbound(&e, lower, upper);
  if (out_sigma2)
    *out_sigma2 = sigma2;
  double threshold = sqrt(e.M * sigma2 * (1.0 + tauubar) *
                          (1.0 + e.alpha / tauubar));
  int64_t count = 0;
  for (int64_t h = 0; h < H; h++)
    count += s[h] > threshold;
  return count;
}
