"""CUDA source of the library kernels: what is not elementwise, as model-independent kernels.

The CUDA generator (dslc/codegen/cuda_gpu.py) copies the kernels a graph uses into its
generated `.cu` module, once per dtype, so a module compiles on its own (nvcc or NVRTC)
and `dslc compile --target gpu --emit` shows everything that runs. Matrix products are
not here: the runner (runner.py, ops.py) calls cuBLAS through `cupy.matmul`, and these
kernels move data around it (im2col/col2im for convolutions, bias adds).

Conventions, shared with the generated kernels:
- Each kernel is written once over `scalar_t` (and `label_t` for integer labels); the
  generator wraps it in `#define scalar_t float` ... `#undef` and replaces `@` in its
  name with the dtype suffix: `dslc_im2col@` -> `dslc_im2col_f32`.
- Launches use DSLC_BLOCK threads per block; `DSLC_FOR` is a grid-stride loop, so any
  grid size is correct and the runner picks one from the element count. Kernels marked
  single-block in SINGLE_BLOCK reduce with `dslc_block_sum` and need exactly one block.
- Every output element is written by one thread that gathers what it needs (col2im and
  the pooling backwards sum over the windows covering an element): no atomics, so
  results are the same bit for bit on every run.
- Sums accumulate in double, as on the CPU.
"""
from __future__ import annotations

from dslc.codegen import cuda_library_axis as axis
from dslc.codegen.emit import CTYPE

# Defined at the top of every generated module: the launch shape, the grid-stride loop
# and a deterministic block reduction (a fixed tree over DSLC_BLOCK shared slots).
PRELUDE = r"""
#define DSLC_BLOCK 256
#define DSLC_INF __longlong_as_double(0x7ff0000000000000LL)
#define DSLC_NAN __longlong_as_double(0x7ff8000000000000LL)
#define DSLC_FOR(i, total) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (total); \
         i += (long long)gridDim.x * blockDim.x)

// The sum of v over the block, returned to every thread. Needs blockDim.x == DSLC_BLOCK
// and every thread of the block to call it (it synchronises).
__device__ double dslc_block_sum(double v)
{
    __shared__ double part[DSLC_BLOCK];
    part[threadIdx.x] = v;
    __syncthreads();
    for (int s = DSLC_BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    const double total = part[0];
    __syncthreads();  // part is reused by the next call
    return total;
}
""".strip("\n")

KERNELS: dict[str, str] = {}

# ---- convolution: im2col + GEMM (cupy.matmul) + scatter, and their adjoints ------------
# col [C*kh*kw, nb*Ho*Wo]: col[(c*kh + u)*kw + v, b*Ho*Wo + i*Wo + j] = xpad[n0+b, c, i*sh + u*dh, j*sw + v*dw]
# mat [O, nb*Ho*Wo]: the GEMM's result (or the output gradient gathered into that layout).

KERNELS["im2col"] = r"""
extern "C" __global__ void dslc_im2col@(const scalar_t* x, scalar_t* col, long long n0, long long nb, int c, int h,
                                        int w, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                                        int ho, int wo)
{
    const long long hw = (long long)ho * wo, cols = nb * hw;
    DSLC_FOR(t, (long long)c * kh * kw * cols) {
        const long long row = t / cols, q = t % cols, b = q / hw;
        const int i = (int)((q % hw) / wo), j = (int)(q % wo);
        const int v = (int)(row % kw), u = (int)((row / kw) % kh);
        const long long ch = row / ((long long)kw * kh);
        const int r = i * sh - pt + u * dh, s = j * sw - pl + v * dw;
        col[t] = (r >= 0 && r < h && s >= 0 && s < w) ? x[((n0 + b) * c + ch) * h * w + (long long)r * w + s]
                                                      : (scalar_t)0;
    }
}
"""

KERNELS["col2im"] = r"""
// dx[n0:n0+nb] = the adjoint of im2col: each element sums the col entries read from it.
extern "C" __global__ void dslc_col2im@(const scalar_t* col, scalar_t* dx, long long n0, long long nb, int c, int h,
                                        int w, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
                                        int ho, int wo)
{
    const long long hw = (long long)ho * wo, cols = nb * hw;
    DSLC_FOR(t, nb * c * h * w) {
        const int s = (int)(t % w), r = (int)((t / w) % h);
        const long long ch = (t / ((long long)w * h)) % c, b = t / ((long long)w * h * c);
        double acc = 0.0;
        for (int u = 0; u < kh; ++u) {
            const int ri = r + pt - u * dh;
            if (ri < 0 || ri % sh != 0 || ri / sh >= ho)
                continue;
            for (int v = 0; v < kw; ++v) {
                const int sj = s + pl - v * dw;
                if (sj < 0 || sj % sw != 0 || sj / sw >= wo)
                    continue;
                acc += col[((ch * kh + u) * kw + v) * cols + b * hw + (long long)(ri / sh) * wo + sj / sw];
            }
        }
        dx[n0 * c * h * w + t] = (scalar_t)acc;
    }
}
"""

KERNELS["conv_scatter"] = r"""
// y[n0+b, o, :] = mat[o, b*hw:(b+1)*hw] (+ bias[o] if has_bias): GEMM layout to NCHW.
extern "C" __global__ void dslc_conv_scatter@(const scalar_t* mat, scalar_t* y, const scalar_t* bias, int has_bias,
                                              long long n0, long long nb, int o, long long hw)
{
    DSLC_FOR(t, nb * o * hw) {
        const long long s = t % hw, b = t / (hw * o);
        const int oc = (int)((t / hw) % o);
        const scalar_t v = mat[oc * nb * hw + b * hw + s];
        y[n0 * o * hw + t] = has_bias ? v + bias[oc] : v;
    }
}
"""

KERNELS["conv_gather"] = r"""
// mat[o, b*hw:(b+1)*hw] = g[n0+b, o, :]: an NCHW gradient in the GEMM layout (scatter's adjoint).
extern "C" __global__ void dslc_conv_gather@(const scalar_t* g, scalar_t* mat, long long n0, long long nb, int o,
                                             long long hw)
{
    DSLC_FOR(t, nb * o * hw) {
        const long long s = t % hw, b = t / (hw * o);
        const int oc = (int)((t / hw) % o);
        mat[oc * nb * hw + b * hw + s] = g[n0 * o * hw + t];
    }
}
"""

KERNELS["bias_rows"] = r"""
// y[r, c] += bias[c]: linear's bias after its GEMM.
extern "C" __global__ void dslc_bias_rows@(scalar_t* y, const scalar_t* bias, long long rows, long long cols)
{
    DSLC_FOR(t, rows * cols)
        y[t] += bias[t % cols];
}
"""

# ---- pooling over [N*C planes, H, W]: windows clipped to the image ---------------------
# max: padding is -inf (excluded); avg: padding counts as zeros (divisor kh*kw, PyTorch's
# count_include_pad=True). maxpool's gradient goes to the first maximum (row-major) of
# each window, NaN first, as the reference's argmax; the backward recomputes it from x.

KERNELS["maxpool_forward"] = r"""
extern "C" __global__ void dslc_maxpool_forward@(const scalar_t* x, scalar_t* y, long long planes, int h, int w,
                                                 int ho, int wo, int kh, int kw, int sh, int sw, int pt, int pl)
{
    DSLC_FOR(t, planes * ho * wo) {
        const int j = (int)(t % wo), i = (int)((t / wo) % ho);
        const scalar_t* plane = x + (t / ((long long)wo * ho)) * h * w;
        const int r0 = max(i * sh - pt, 0), r1 = min(i * sh - pt + kh, h);
        const int c0 = max(j * sw - pl, 0), c1 = min(j * sw - pl + kw, w);
        scalar_t best = plane[r0 * w + c0];
        for (int r = r0; r < r1; ++r)
            for (int s = c0; s < c1; ++s) {
                const scalar_t v = plane[r * w + s];
                best = (v > best || v != v) ? v : best;  // once best is NaN nothing is greater
            }
        y[t] = best;
    }
}
"""

KERNELS["maxpool_backward"] = r"""
// dx[n, c, r, s] = the sum of g over the windows whose first maximum is at (r, s); with
// positive, 0 where x <= 0 (a relu's gradient folded in: dslc/passes/pool_relu.py).
extern "C" __global__ void dslc_maxpool_backward@(const scalar_t* g, const scalar_t* x, scalar_t* dx, long long planes,
                                                  int h, int w, int ho, int wo, int kh, int kw, int sh, int sw,
                                                  int pt, int pl, int positive)
{
    DSLC_FOR(t, planes * h * w) {
        const int s = (int)(t % w), r = (int)((t / w) % h);
        const long long p = t / ((long long)w * h);
        const scalar_t* plane = x + p * h * w;
        const int i0 = max(r + pt - kh + 1 + sh - 1, 0) / sh, i1 = min((r + pt) / sh, ho - 1);
        const int j0 = max(s + pl - kw + 1 + sw - 1, 0) / sw, j1 = min((s + pl) / sw, wo - 1);
        double acc = 0.0;
        for (int i = i0; i <= i1; ++i)
            for (int j = j0; j <= j1; ++j) {
                const int r0 = max(i * sh - pt, 0), r1 = min(i * sh - pt + kh, h);
                const int c0 = max(j * sw - pl, 0), c1 = min(j * sw - pl + kw, w);
                int best_at = r0 * w + c0;
                scalar_t best = plane[best_at];
                for (int rr = r0; rr < r1; ++rr)
                    for (int ss = c0; ss < c1; ++ss) {
                        const scalar_t v = plane[rr * w + ss];
                        if (v > best || (v != v && best == best)) {
                            best = v;
                            best_at = rr * w + ss;
                        }
                    }
                if (best_at == r * w + s)
                    acc += g[(p * ho + i) * wo + j];
            }
        dx[t] = (positive && !(plane[r * w + s] > 0)) ? (scalar_t)0 : (scalar_t)acc;
    }
}
"""

KERNELS["avgpool_forward"] = r"""
extern "C" __global__ void dslc_avgpool_forward@(const scalar_t* x, scalar_t* y, long long planes, int h, int w,
                                                 int ho, int wo, int kh, int kw, int sh, int sw, int pt, int pl)
{
    DSLC_FOR(t, planes * ho * wo) {
        const int j = (int)(t % wo), i = (int)((t / wo) % ho);
        const scalar_t* plane = x + (t / ((long long)wo * ho)) * h * w;
        double acc = 0.0;
        for (int r = max(i * sh - pt, 0); r < min(i * sh - pt + kh, h); ++r)
            for (int s = max(j * sw - pl, 0); s < min(j * sw - pl + kw, w); ++s)
                acc += plane[r * w + s];
        y[t] = (scalar_t)(acc / (kh * kw));
    }
}
"""

KERNELS["avgpool_backward"] = r"""
// dx[n, c, r, s] = the sum of g / (kh*kw) over the windows covering (r, s).
extern "C" __global__ void dslc_avgpool_backward@(const scalar_t* g, scalar_t* dx, long long planes, int h, int w,
                                                  int ho, int wo, int kh, int kw, int sh, int sw, int pt, int pl)
{
    DSLC_FOR(t, planes * h * w) {
        const int s = (int)(t % w), r = (int)((t / w) % h);
        const long long p = t / ((long long)w * h);
        const int i0 = max(r + pt - kh + 1 + sh - 1, 0) / sh, i1 = min((r + pt) / sh, ho - 1);
        const int j0 = max(s + pl - kw + 1 + sw - 1, 0) / sw, j1 = min((s + pl) / sw, wo - 1);
        double acc = 0.0;
        for (int i = i0; i <= i1; ++i)
            for (int j = j0; j <= j1; ++j)
                acc += g[(p * ho + i) * wo + j];
        dx[t] = (scalar_t)(acc / (kh * kw));
    }
}
"""

KERNELS["global_avgpool_forward"] = r"""
// y[n, c] = the mean of plane (n, c) of x [N, C, ...].
extern "C" __global__ void dslc_global_avgpool_forward@(const scalar_t* x, scalar_t* y, long long planes,
                                                        long long size)
{
    DSLC_FOR(t, planes) {
        double acc = 0.0;
        for (long long k = 0; k < size; ++k)
            acc += x[t * size + k];
        y[t] = (scalar_t)(acc / size);
    }
}
"""

# ---- softmax and the classification losses -----------------------------------------------
# softmax/log_softmax see x as [A, K, B] around the axis K; the losses take logits [N, K]
# and labels [N]. N is read from the launch, never baked in: the batch is bound at run time.

KERNELS["softmax_forward"] = r"""
// One thread per (a, b): shift by the max, exp, sum, then exp(z - lse) or z - lse (log).
extern "C" __global__ void dslc_softmax_forward@(const scalar_t* x, scalar_t* y, long long a, long long k, long long b,
                                                 int log_output)
{
    DSLC_FOR(t, a * b) {
        const long long base = (t / b) * k * b + t % b;
        double m = x[base];
        for (long long q = 1; q < k; ++q)
            m = fmax(m, (double)x[base + q * b]);
        double s = 0.0;
        for (long long q = 0; q < k; ++q)
            s += exp((double)x[base + q * b] - m);
        const double lse = log(s);
        for (long long q = 0; q < k; ++q) {
            const double z = (double)x[base + q * b] - m - lse;
            y[base + q * b] = (scalar_t)(log_output ? z : exp(z));
        }
    }
}
"""

KERNELS["row_lse"] = r"""
// m + log sum_q exp(z[q] - m) of one row of k logits, in double (overloaded per dtype).
__device__ double dslc_row_lse(const scalar_t* z, long long k)
{
    double m = z[0];
    for (long long q = 1; q < k; ++q)
        m = fmax(m, (double)z[q]);
    double s = 0.0;
    for (long long q = 0; q < k; ++q)
        s += exp((double)z[q] - m);
    return m + log(s);
}
"""

KERNELS["cross_entropy_forward"] = r"""
// loss[0] = mean_i (logsumexp(z_i) - z_i[label_i]); one block.
extern "C" __global__ void dslc_cross_entropy_forward@(const scalar_t* logits, const label_t* labels, scalar_t* loss,
                                                       long long n, long long k)
{
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
        acc += dslc_row_lse(logits + i * k, k) - (double)logits[i * k + labels[i]];
    const double total = dslc_block_sum(acc);
    if (threadIdx.x == 0)
        loss[0] = (scalar_t)(total / n);
}
"""

KERNELS["cross_entropy_backward"] = r"""
// dlogits[i, q] = (softmax(z_i)[q] - [q == label_i]) * g / N; one thread per row.
extern "C" __global__ void dslc_cross_entropy_backward@(const scalar_t* logits, const label_t* labels,
                                                        const scalar_t* g, scalar_t* dlogits, long long n, long long k)
{
    const double scale = (double)g[0] / n;
    DSLC_FOR(i, n) {
        const double lse = dslc_row_lse(logits + i * k, k);
        for (long long q = 0; q < k; ++q) {
            const double p = exp((double)logits[i * k + q] - lse);
            dlogits[i * k + q] = (scalar_t)((p - (q == labels[i] ? 1.0 : 0.0)) * scale);
        }
    }
}
"""

KERNELS["accuracy"] = r"""
// out[0] = the fraction of rows whose first maximum is at the label (argmax's tie rule); one block.
extern "C" __global__ void dslc_accuracy@(const scalar_t* logits, const label_t* labels, scalar_t* out, long long n,
                                          long long k)
{
    double hits = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        long long best = 0;
        for (long long q = 1; q < k; ++q)
            if (logits[i * k + q] > logits[i * k + best])
                best = q;
        hits += best == labels[i];
    }
    const double total = dslc_block_sum(hits);
    if (threadIdx.x == 0)
        out[0] = (scalar_t)(total / n);
}
"""

KERNELS["svm_forward"] = r"""
// loss[0] = mean_i sum_{q != label_i} max(0, s_iq - s_i,label_i + margin): the multiclass hinge; one block.
extern "C" __global__ void dslc_svm_forward@(const scalar_t* s, const label_t* labels, scalar_t* loss, long long n,
                                             long long k, double margin)
{
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const double right = s[i * k + labels[i]];
        for (long long q = 0; q < k; ++q) {
            const double m = (double)s[i * k + q] - right + margin;
            if (q != labels[i] && m > 0)
                acc += m;
        }
    }
    const double total = dslc_block_sum(acc);
    if (threadIdx.x == 0)
        loss[0] = (scalar_t)(total / n);
}
"""

KERNELS["svm_backward"] = r"""
// ds[i, q] = [margin violated] * g / N off the label, minus their count at it; 0 at the hinge. A thread per row.
extern "C" __global__ void dslc_svm_backward@(const scalar_t* s, const label_t* labels, const scalar_t* g,
                                              scalar_t* ds, long long n, long long k, double margin)
{
    const double scale = (double)g[0] / n;
    DSLC_FOR(i, n) {
        const double right = s[i * k + labels[i]];
        long long count = 0;
        for (long long q = 0; q < k; ++q) {
            const bool on = q != labels[i] && (double)s[i * k + q] - right + margin > 0;
            ds[i * k + q] = (scalar_t)(on ? scale : 0.0);
            count += on;
        }
        ds[i * k + labels[i]] = (scalar_t)(-count * scale);
    }
}
"""

# ---- shape ops: slice (x as [A, D, B] around the axis), its gradient, pad -----------------

KERNELS["slice_forward"] = r"""
// out[i, j, q] = x[i, first + j*step, q]: out is [a, k, b], x [a, d, b].
extern "C" __global__ void dslc_slice_forward@(const scalar_t* x, scalar_t* out, long long a, long long d, long long k,
                                               long long b, long long first, long long step)
{
    DSLC_FOR(t, a * k * b) {
        const long long q = t % b, j = (t / b) % k, i = t / (b * k);
        out[t] = x[(i * d + first + j * step) * b + q];
    }
}
"""

KERNELS["slice_backward"] = r"""
// dx[i, e, q] = g[i, (e - first) / step, q] where e is on the slice, else 0: the slice's adjoint, gathered.
extern "C" __global__ void dslc_slice_backward@(const scalar_t* g, scalar_t* dx, long long a, long long d, long long k,
                                                long long b, long long first, long long step)
{
    DSLC_FOR(t, a * d * b) {
        const long long q = t % b, e = (t / b) % d, i = t / (b * d);
        const long long j = (e - first) / step;
        dx[t] = (e >= first && (e - first) % step == 0 && j < k) ? g[(i * k + j) * b + q] : (scalar_t)0;
    }
}
"""

KERNELS["pad_forward"] = r"""
// out = x surrounded by `value`, both seen as 6-D (sizes xs*, os*; the runner merges and
// prepends axes), x at offset lo* along each axis.
extern "C" __global__ void dslc_pad_forward@(const scalar_t* x, scalar_t* out, long long xs0, long long xs1,
                                             long long xs2, long long xs3, long long xs4, long long xs5, long long os0,
                                             long long os1, long long os2, long long os3, long long os4, long long os5,
                                             long long lo0, long long lo1, long long lo2, long long lo3, long long lo4,
                                             long long lo5, double value)
{
    const long long xs[6] = {xs0, xs1, xs2, xs3, xs4, xs5}, os[6] = {os0, os1, os2, os3, os4, os5};
    const long long lo[6] = {lo0, lo1, lo2, lo3, lo4, lo5};
    DSLC_FOR(t, os0 * os1 * os2 * os3 * os4 * os5) {
        long long rest = t, at = 0, scale = 1;
        bool inside = true;
        for (int e = 5; e >= 0; --e) {
            const long long i = rest % os[e] - lo[e];
            rest /= os[e];
            inside = inside && i >= 0 && i < xs[e];
            at += i * scale;
            scale *= xs[e];
        }
        out[t] = inside ? x[at] : (scalar_t)value;
    }
}
"""

# ---- groupnorm (layernorm: one group, instancenorm: one channel per group) ------------------
# x as [N*G groups, m]: group t is m contiguous values, channel c = (t % G) * per + q / size of
# its element q (per = C/G channels of `size` values each). One block per group (a grid-stride
# loop over blocks), its sums by dslc_block_sum: deterministic, no atomics.

KERNELS["group_stats"] = r"""
// (mean, 1/sqrt(var + eps)) of one group's m values, two passes in double; every thread of the block calls it.
__device__ void dslc_group_stats(const scalar_t* row, long long m, double eps, double* mean, double* inv)
{
    double s = 0.0;
    for (long long q = threadIdx.x; q < m; q += blockDim.x)
        s += row[q];
    const double mu = dslc_block_sum(s) / m;
    double v = 0.0;
    for (long long q = threadIdx.x; q < m; q += blockDim.x) {
        const double e = (double)row[q] - mu;
        v += e * e;
    }
    *mean = mu;
    *inv = 1.0 / sqrt(dslc_block_sum(v) / m + eps);
}
"""

KERNELS["groupnorm_forward"] = r"""
extern "C" __global__ void dslc_groupnorm_forward@(const scalar_t* x, const scalar_t* gamma, const scalar_t* beta,
                                                   scalar_t* y, long long total, long long groups, long long m,
                                                   long long size, double eps)
{
    for (long long t = blockIdx.x; t < total; t += gridDim.x) {
        double mean, inv;
        dslc_group_stats(x + t * m, m, eps, &mean, &inv);
        const long long c0 = (t % groups) * (m / size);
        for (long long q = threadIdx.x; q < m; q += blockDim.x) {
            const long long c = c0 + q / size;
            y[t * m + q] = (scalar_t)(((double)x[t * m + q] - mean) * inv * gamma[c] + beta[c]);
        }
    }
}
"""

KERNELS["groupnorm_grad_input"] = r"""
// dx = (d - mean(d) - xhat * mean(d * xhat)) / sigma per group, d = g * gamma[c].
extern "C" __global__ void dslc_groupnorm_grad_input@(const scalar_t* g, const scalar_t* x, const scalar_t* gamma,
                                                      scalar_t* dx, long long total, long long groups, long long m,
                                                      long long size, double eps)
{
    for (long long t = blockIdx.x; t < total; t += gridDim.x) {
        double mean, inv;
        dslc_group_stats(x + t * m, m, eps, &mean, &inv);
        const long long c0 = (t % groups) * (m / size);
        double sd = 0.0, sdx = 0.0;
        for (long long q = threadIdx.x; q < m; q += blockDim.x) {
            const double d = (double)g[t * m + q] * gamma[c0 + q / size];
            sd += d;
            sdx += d * ((double)x[t * m + q] - mean);
        }
        const double mean_d = dslc_block_sum(sd) / m, mean_dx = dslc_block_sum(sdx) * inv / m;
        for (long long q = threadIdx.x; q < m; q += blockDim.x) {
            const double d = (double)g[t * m + q] * gamma[c0 + q / size];
            const double xhat = ((double)x[t * m + q] - mean) * inv;
            dx[t * m + q] = (scalar_t)((d - mean_d - xhat * mean_dx) * inv);
        }
    }
}
"""

KERNELS["groupnorm_stats"] = r"""
// stats[2t], stats[2t + 1] = the mean and 1/sigma of group t, for groupnorm_grad_gamma.
extern "C" __global__ void dslc_groupnorm_stats@(const scalar_t* x, scalar_t* stats, long long total, long long m,
                                                 double eps)
{
    for (long long t = blockIdx.x; t < total; t += gridDim.x) {
        double mean, inv;
        dslc_group_stats(x + t * m, m, eps, &mean, &inv);
        if (threadIdx.x == 0) {
            stats[2 * t] = (scalar_t)mean;
            stats[2 * t + 1] = (scalar_t)inv;
        }
    }
}
"""

KERNELS["groupnorm_grad_gamma"] = r"""
// dgamma[c] = sum_{n, s} g * (x - mean) / sigma, one block per channel; x, g [n, channels, size].
extern "C" __global__ void dslc_groupnorm_grad_gamma@(const scalar_t* g, const scalar_t* x, const scalar_t* stats,
                                                      scalar_t* dgamma, long long n, long long channels,
                                                      long long groups, long long size)
{
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        double acc = 0.0;
        for (long long e = threadIdx.x; e < n * size; e += blockDim.x) {
            const long long i = e / size, at = (i * channels + c) * size + e % size;
            const long long t = i * groups + c / (channels / groups);
            acc += (double)g[at] * ((double)x[at] - stats[2 * t]) * stats[2 * t + 1];
        }
        const double total = dslc_block_sum(acc);
        if (threadIdx.x == 0)
            dgamma[c] = (scalar_t)total;
    }
}
"""

# The kernels along an axis and over images (max, gather, stack, nll, r2, upsample, lrn ...) join the table.
KERNELS.update(axis.KERNELS)

LABELLED = ("cross_entropy_forward", "cross_entropy_backward", "accuracy", "svm_forward", "svm_backward") + axis.LABELLED
SINGLE_BLOCK = ("cross_entropy_forward", "accuracy", "svm_forward") + axis.SINGLE_BLOCK
# Device helpers that read no tensor: one copy per module, whatever the dtypes.
UNTYPED = ("upsample_source",)
# One block per item of `count` (groups, channels), not one thread per element.
PER_BLOCK = ("groupnorm_forward", "groupnorm_grad_input", "groupnorm_stats", "groupnorm_grad_gamma")

# The library kernels an extern op's launch uses (see ops.py for how it calls them).
NEEDS: dict[str, tuple[str, ...]] = {
    "matmul": (),
    "linear": ("bias_rows",),
    "conv2d": ("im2col", "conv_scatter"),
    "conv2d_grad_input": ("conv_gather", "col2im"),
    "conv2d_grad_weight": ("im2col", "conv_gather"),
    "maxpool": ("maxpool_forward",),
    "maxpool_grad": ("maxpool_backward",),
    "avgpool": ("avgpool_forward",),
    "avgpool_grad": ("avgpool_backward",),
    "global_avgpool": ("global_avgpool_forward",),
    "softmax": ("softmax_forward",),
    "log_softmax": ("softmax_forward",),
    "cross_entropy": ("row_lse", "cross_entropy_forward"),
    "cross_entropy_grad": ("row_lse", "cross_entropy_backward"),
    "accuracy": ("accuracy",),
    "svm": ("svm_forward",),
    "svm_grad": ("svm_backward",),
    "slice": ("slice_forward",),
    "slice_grad": ("slice_backward",),
    "pad": ("pad_forward",),
    "groupnorm": ("group_stats", "groupnorm_forward"),
    "layernorm": ("group_stats", "groupnorm_forward"),
    "instancenorm": ("group_stats", "groupnorm_forward"),
    "groupnorm_grad_input": ("group_stats", "groupnorm_grad_input"),
    "groupnorm_grad_gamma": ("group_stats", "groupnorm_stats", "groupnorm_grad_gamma"),
    "allreduce_mean": (),  # NCCL, called by the runner (runtime/cuda/nccl.py)
    "global_count": (),
    **axis.NEEDS,
}



def function_name(kernel: str, dtype: str | None, label: str | None = None) -> str:
    """`dslc_im2col_f32`, `dslc_accuracy_f32_i64`: the name a module exports for a kernel."""
    return f"dslc_{kernel}_{dtype}" + (f"_{label}" if kernel in LABELLED else "")


def source(kernel: str, dtype: str | None, label: str | None = None) -> str:
    """The kernel's text for one dtype (and label dtype): macros around, names suffixed; an
    UNTYPED helper as it is (its dtype None)."""
    if kernel in UNTYPED:
        return KERNELS[kernel].strip("\n")
    suffix = function_name(kernel, dtype, label)[len(f"dslc_{kernel}"):]
    lines = [f"#define scalar_t {CTYPE[dtype]}"]
    if kernel in LABELLED:
        lines.append(f"#define label_t {CTYPE[label]}")
    lines.append(KERNELS[kernel].strip("\n").replace("@", suffix))
    lines.append("#undef scalar_t")
    if kernel in LABELLED:
        lines.append("#undef label_t")
    return "\n".join(lines)
