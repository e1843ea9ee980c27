"""CUDA source of the library kernels along one axis and over images: max/min/argmax, gather,
one_hot, stack, the nll loss and r2, upsample and lrn (each the CUDA twin of
dslc/runtime/cpu/along_axis.py, resample.py, lrn.py; the conventions are cuda_library.py's:
`scalar_t`/`label_t`, `@` for the dtype suffix, grid-stride loops, one writer per element).

Tensors along an axis are [A, K, B] (dslc/ops/reduce.axis_view); the runner passes a, k, b.
The first extremum is np.argmax's: a NaN wins, and max/min return its value. An index
outside its axis cannot raise on the GPU: gather writes NaN and one_hot a row of zeros,
so the loss shows it (the CPU raises).
"""
from __future__ import annotations

KERNELS: dict[str, str] = {}

KERNELS["first_extremum"] = r"""
// The index along K of the first max (min when smallest) of x[(a, :, b)], base = its first element.
__device__ long long dslc_first_extremum(const scalar_t* x, long long base, long long k, long long b, int smallest)
{
    long long best = 0;
    if (x[base] != x[base])
        return 0;
    for (long long q = 1; q < k; ++q) {
        const scalar_t v = x[base + q * b];
        if (v != v)
            return q;
        if (smallest ? v < x[base + best * b] : v > x[base + best * b])
            best = q;
    }
    return best;
}
"""

KERNELS["extremum"] = r"""
extern "C" __global__ void dslc_extremum@(const scalar_t* x, scalar_t* y, long long a, long long k, long long b,
                                          int smallest)
{
    DSLC_FOR(t, a * b) {
        const long long base = (t / b) * k * b + t % b;
        y[t] = x[base + dslc_first_extremum(x, base, k, b, smallest) * b];
    }
}
"""

KERNELS["argmax"] = r"""
extern "C" __global__ void dslc_argmax@(const scalar_t* x, long long* y, long long a, long long k, long long b)
{
    DSLC_FOR(t, a * b)
        y[t] = dslc_first_extremum(x, (t / b) * k * b + t % b, k, b, 0);
}
"""

KERNELS["extremum_grad"] = r"""
// dx = g at the first max (min) of x along the axis, 0 elsewhere; one thread per (a, b).
extern "C" __global__ void dslc_extremum_grad@(const scalar_t* x, const scalar_t* g, scalar_t* dx, long long a,
                                               long long k, long long b, int smallest)
{
    DSLC_FOR(t, a * b) {
        const long long base = (t / b) * k * b + t % b;
        const long long at = dslc_first_extremum(x, base, k, b, smallest);
        for (long long q = 0; q < k; ++q)
            dx[base + q * b] = q == at ? g[t] : (scalar_t)0;
    }
}
"""

KERNELS["gather"] = r"""
// y[a, b] = x[a, index[a, b], b]; NaN for an index outside [0, k).
extern "C" __global__ void dslc_gather@(const scalar_t* x, const label_t* index, scalar_t* y, long long a,
                                        long long k, long long b)
{
    DSLC_FOR(t, a * b) {
        const long long q = index[t];
        y[t] = (q >= 0 && q < k) ? x[(t / b) * k * b + q * b + t % b] : (scalar_t)DSLC_NAN;
    }
}
"""

KERNELS["gather_grad"] = r"""
// dx[a, q, b] = g[a, b] where index[a, b] == q, else 0; one thread per element of dx.
extern "C" __global__ void dslc_gather_grad@(const scalar_t* g, const label_t* index, scalar_t* dx, long long a,
                                             long long k, long long b)
{
    DSLC_FOR(t, a * k * b) {
        const long long at = (t / (k * b)) * b + t % b;
        dx[t] = index[at] == (t / b) % k ? g[at] : (scalar_t)0;
    }
}
"""

KERNELS["one_hot"] = r"""
// y[i, c] = 1 where index[i] == c, else 0.
extern "C" __global__ void dslc_one_hot@(const label_t* index, scalar_t* y, long long n, long long k)
{
    DSLC_FOR(t, n * k)
        y[t] = index[t / k] == t % k ? (scalar_t)1 : (scalar_t)0;
}
"""

KERNELS["stack_part"] = r"""
// y[a, slot, b] = x[a, b]: input `slot` of a stack whose new axis has k entries.
extern "C" __global__ void dslc_stack_part@(const scalar_t* x, scalar_t* y, long long a, long long k, long long b,
                                            long long slot)
{
    DSLC_FOR(t, a * b)
        y[(t / b) * k * b + slot * b + t % b] = x[t];
}
"""

KERNELS["unstack"] = r"""
// y[a, b] = g[a, slot, b]: one input's part of a stacked tensor.
extern "C" __global__ void dslc_unstack@(const scalar_t* g, scalar_t* y, long long a, long long k, long long b,
                                         long long slot)
{
    DSLC_FOR(t, a * b)
        y[t] = g[(t / b) * k * b + slot * b + t % b];
}
"""

KERNELS["nll_loss_forward"] = r"""
// loss[0] = mean_i -logp[i, label_i]; one block.
extern "C" __global__ void dslc_nll_loss_forward@(const scalar_t* logp, const label_t* labels, scalar_t* loss,
                                                  long long n, long long k)
{
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
        acc -= (double)logp[i * k + labels[i]];
    const double total = dslc_block_sum(acc);
    if (threadIdx.x == 0)
        loss[0] = (scalar_t)(total / n);
}
"""

KERNELS["nll_loss_backward"] = r"""
// dlogp[i, q] = -g / N where q == label_i, else 0.
extern "C" __global__ void dslc_nll_loss_backward@(const scalar_t* logp, const label_t* labels, const scalar_t* g,
                                                   scalar_t* dlogp, long long n, long long k)
{
    const double scale = -(double)g[0] / n;
    DSLC_FOR(t, n * k)
        dlogp[t] = (scalar_t)(t % k == labels[t / k] ? scale : 0.0);
}
"""

KERNELS["r2"] = r"""
// out[0] = 1 - sum (p - t)^2 / sum (t - mean t)^2, the target's sums shifted by its first element; one block.
extern "C" __global__ void dslc_r2@(const scalar_t* pred, const scalar_t* target, scalar_t* out, long long n)
{
    const double shift = target[0];
    double residual = 0.0, s1 = 0.0, s2 = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = (double)pred[i] - target[i], u = target[i] - shift;
        residual += d * d;
        s1 += u;
        s2 += u * u;
    }
    residual = dslc_block_sum(residual);
    s1 = dslc_block_sum(s1);
    s2 = dslc_block_sum(s2);
    // A constant target (s2 == 0): 1 for a perfect prediction, else 0, NaN stays NaN (the reference's rule).
    if (threadIdx.x == 0)
        out[0] = (scalar_t)(s2 == 0.0 ? (residual != residual ? residual : residual == 0.0 ? 1.0 : 0.0)
                                      : 1.0 - residual / (s2 - s1 * s1 / n));
}
"""

# ---- upsample (nearest, bilinear; align_corners=False) and lrn, as the CPU's ------------------

KERNELS["upsample_source"] = r"""
// Output row i reads rows *lo and *hi with weights 1 - f and f (f returned).
__device__ __forceinline__ double dslc_upsample_source(long long i, int scale, long long size, int bilinear,
                                                       long long* lo, long long* hi)
{
    if (!bilinear) {
        *lo = *hi = i / scale;
        return 0.0;
    }
    const double src = fmax((i + 0.5) / scale - 0.5, 0.0);
    *lo = (long long)src;
    *hi = *lo + 1 < size ? *lo + 1 : size - 1;
    return src - *lo;
}
"""

KERNELS["upsample_forward"] = r"""
extern "C" __global__ void dslc_upsample_forward@(const scalar_t* x, scalar_t* y, long long planes, long long h,
                                                  long long w, int sh, int sw, int bilinear)
{
    const long long ho = h * sh, wo = w * sw;
    DSLC_FOR(t, planes * ho * wo) {
        const long long j = t % wo, i = (t / wo) % ho;
        const scalar_t* plane = x + (t / (wo * ho)) * h * w;
        long long r0, r1, c0, c1;
        const double fr = dslc_upsample_source(i, sh, h, bilinear, &r0, &r1);
        const double fc = dslc_upsample_source(j, sw, w, bilinear, &c0, &c1);
        const double top = (1.0 - fc) * plane[r0 * w + c0] + fc * plane[r0 * w + c1];
        const double bottom = (1.0 - fc) * plane[r1 * w + c0] + fc * plane[r1 * w + c1];
        y[t] = (scalar_t)((1.0 - fr) * top + fr * bottom);
    }
}
"""

KERNELS["upsample_backward"] = r"""
// dx[r, c] = the sum over the outputs (i, j) that read (r, c) of g times their weights: a gather,
// over i in (r - 1) * sh .. (r + 2) * sh and j likewise.
extern "C" __global__ void dslc_upsample_backward@(const scalar_t* g, scalar_t* dx, long long planes, long long h,
                                                   long long w, int sh, int sw, int bilinear)
{
    const long long ho = h * sh, wo = w * sw;
    DSLC_FOR(t, planes * h * w) {
        const long long c = t % w, r = (t / w) % h;
        const scalar_t* plane = g + (t / (w * h)) * ho * wo;
        double acc = 0.0;
        long long lo, hi;
        for (long long i = (r - 1) * sh > 0 ? (r - 1) * sh : 0; i < ho && i < (r + 2) * sh; ++i) {
            const double fi = dslc_upsample_source(i, sh, h, bilinear, &lo, &hi);
            const double wi = (1.0 - fi) * (lo == r) + fi * (hi == r);
            if (wi == 0.0)
                continue;
            for (long long j = (c - 1) * sw > 0 ? (c - 1) * sw : 0; j < wo && j < (c + 2) * sw; ++j) {
                const double fj = dslc_upsample_source(j, sw, w, bilinear, &lo, &hi);
                const double wj = (1.0 - fj) * (lo == c) + fj * (hi == c);
                if (wj != 0.0)
                    acc += wi * wj * plane[i * wo + j];
            }
        }
        dx[t] = (scalar_t)acc;
    }
}
"""

KERNELS["lrn_scale"] = r"""
// S_c = k + alpha / size * the sum of x^2 over window(c) = c - size/2 .. c + (size-1)/2, of the
// channel column x[n, :, s] (stride s_len between channels, base its channel 0).
__device__ double dslc_lrn_scale(const scalar_t* x, long long base, long long s_len, long long channels,
                                 long long c, int size, double alpha, double k)
{
    double acc = 0.0;
    const long long lo = c - size / 2 > 0 ? c - size / 2 : 0;
    const long long hi = c + (size - 1) / 2 + 1 < channels ? c + (size - 1) / 2 + 1 : channels;
    for (long long q = lo; q < hi; ++q) {
        const double v = x[base + q * s_len];
        acc += v * v;
    }
    return k + alpha / size * acc;
}
"""

KERNELS["lrn_forward"] = r"""
extern "C" __global__ void dslc_lrn_forward@(const scalar_t* x, scalar_t* y, long long n, long long channels,
                                             long long s_len, int size, double alpha, double beta, double k)
{
    DSLC_FOR(t, n * channels * s_len) {
        const long long c = (t / s_len) % channels, base = (t / (s_len * channels)) * channels * s_len + t % s_len;
        y[t] = (scalar_t)(x[t] * pow(dslc_lrn_scale(x, base, s_len, channels, c, size, alpha, k), -beta));
    }
}
"""

KERNELS["lrn_backward"] = r"""
// dx_j = g_j S_j^-beta - 2 alpha beta / size * x_j * sum over the c whose window holds j of g_c x_c S_c^(-beta-1).
extern "C" __global__ void dslc_lrn_backward@(const scalar_t* x, const scalar_t* g, scalar_t* dx, long long n,
                                              long long channels, long long s_len, int size, double alpha,
                                              double beta, double k)
{
    DSLC_FOR(t, n * channels * s_len) {
        const long long j = (t / s_len) % channels, base = (t / (s_len * channels)) * channels * s_len + t % s_len;
        const long long lo = j - (size - 1) / 2 > 0 ? j - (size - 1) / 2 : 0;
        const long long hi = j + size / 2 + 1 < channels ? j + size / 2 + 1 : channels;
        double acc = 0.0;
        for (long long c = lo; c < hi; ++c) {
            const long long at = base + c * s_len;
            acc += (double)g[at] * x[at] * pow(dslc_lrn_scale(x, base, s_len, channels, c, size, alpha, k), -beta - 1.0);
        }
        dx[t] = (scalar_t)(g[t] * pow(dslc_lrn_scale(x, base, s_len, channels, j, size, alpha, k), -beta)
                           - 2.0 * alpha * beta / size * x[t] * acc);
    }
}
"""

LABELLED = ("gather", "gather_grad", "one_hot", "nll_loss_forward", "nll_loss_backward")
SINGLE_BLOCK = ("nll_loss_forward", "r2")

# The library kernels each extern op's launch uses (runtime/cuda/ops.py calls them).
NEEDS: dict[str, tuple[str, ...]] = {
    "max": ("first_extremum", "extremum"),
    "min": ("first_extremum", "extremum"),
    "argmax": ("first_extremum", "argmax"),
    "extremum_grad": ("first_extremum", "extremum_grad"),
    "gather": ("gather",),
    "gather_grad": ("gather_grad",),
    "one_hot": ("one_hot",),
    "stack": ("stack_part",),
    "unstack": ("unstack",),
    "nll_loss": ("nll_loss_forward",),
    "nll_loss_grad": ("nll_loss_backward",),
    "r2": ("r2",),
    "bmm": (),
    "upsample": ("upsample_source", "upsample_forward"),
    "upsample_grad": ("upsample_source", "upsample_backward"),
    "lrn": ("lrn_scale", "lrn_forward"),
    "lrn_grad": ("lrn_scale", "lrn_backward"),
}
