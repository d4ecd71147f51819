"""CuPy path for convolutional kernels: one CUDA block per (image pair, slab).

The same slab formulation as ``cpu_slab`` (see its docstring): the pixel-pair
covariance splits into independent per-offset slabs ``S_δ[h, w]``, each an
``H × W`` image that Conv / activation / Dense layers map on their own. On the
GPU a thread block owns one slab of one image pair: the slab (Σ and Θ, double
buffered) lives in shared memory, each Conv is a stencil over shared memory
fused with the affine map, each activation an elementwise closed form, and
the final GlobalAvgPool/Flatten a block reduction plus one ``atomicAdd`` per
pair. Nothing of size ``H²W²`` ever touches global memory, unlike running
the array-API reference path under CuPy (which materialises
``n1·n2·H²W²`` covariances and ~10 temporaries per layer).

Orchestration (self-variances, pair lists, mirroring, flat layers after the
pooling) is shared with ``cpu_slab.evaluate`` and tested on the CPU; only
``run_pairs`` below is GPU-specific. CuPy is imported lazily. Checked with
``benchmarks/gpu_check_conv.py`` (parity with NumPy and throughput) on a GPU
machine; tests marked ``gpu``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...backend import namespace_of
from . import cpu_slab
from .reference_image import ImagePlan
from .slab_program import SUPPORTED_LAYERS as SLAB_LAYERS
from .slab_program import Program, unsupported as slab_unsupported
from ..layers.base import LayerImpl

#: Layers this kernel runs on images: the slab layers without AvgPool (it has
#: no pooling stages); flat layers after the image part run the reference maps.
SUPPORTED_LAYERS = SLAB_LAYERS - {"AvgPool"}

#: Threads per block (loop over slab positions).
THREADS = 256
#: Largest dynamic shared memory a block may ask for (bytes; H100/H200 allow
#: 227 KiB with opt-in, every CUDA GPU since Volta at least 96 KiB).
MAX_SHARED = 96 * 1024
#: Blocks per launch (pairs × slabs), bounded to keep pair lists small.
MAX_BLOCKS = 1 << 24

_SOURCE = r"""
typedef __TYPE__ T;

__device__ __forceinline__ void valid_range(int n, int delta, int circ, int* lo, int* hi) {
    if (circ) { *lo = 0; *hi = n; }
    else { *lo = max(0, -delta); *hi = min(n, n - delta); }
}

__device__ __forceinline__ int wrap(int a, int n) { int r = a % n; return r < 0 ? r + n : r; }

// ReLU family (f0 = A, f1 = F) in the scale-free form of slab_ops.abrelu1.
__device__ __forceinline__ T abrelu(T c, T sa, T sb, T f0, T f1, T tol, T* dot) {
    T norm = sa * sb;
    T ac = fmin(fabs(c), norm);
    if (ac > norm - tol * norm) ac = norm;
    T s = sqrt((norm - ac) * (norm + ac));
    T sang = norm > (T)0 ? s : (T)1;
    T th = atan2(sang, c >= (T)0 ? ac : -ac);
    *dot = f0 - f1 * th;
    return f1 * s + (*dot) * (c >= (T)0 ? ac : -ac);
}

__device__ __forceinline__ T erf_dual(T c, T qa, T sa, T qb, T sb, T a, T b, T shift, T tol,
                                      T* dot) {
    const T pi = (T)3.141592653589793;
    T b2 = b * b;
    T norm = sa * sb;
    T ac = fmin(fabs(c), norm);
    if (ac > norm - tol * norm) ac = norm;
    T root = sqrt((T)1 + (T)2 * b2 * (qa + qb) + (T)4 * b2 * b2 * ((norm - ac) * (norm + ac)));
    *dot = a * a * b2 * (T)4 / pi / root;
    return a * a * (T)2 / pi * atan2((T)2 * b2 * c, root) + shift * shift;
}

extern "C" __global__ void slab_kernel(
    const T* __restrict__ X1, const T* __restrict__ X2, const int H0, const int W0, const int C,
    const long long* __restrict__ pi, const long long* __restrict__ pj, const long long npairs,
    const int* __restrict__ ops, const int nops, const T* __restrict__ fpar,
    const int* __restrict__ sdim, const int* __restrict__ spad,
    const int* __restrict__ deltas, const int ndelta,
    const T* __restrict__ Q1, const T* __restrict__ S1, const T* __restrict__ Q2,
    const T* __restrict__ S2, const int nv, const int maxbuf,
    const T tol, const T inv_count, const int circ, const int want_ntk,
    T* __restrict__ out_k, T* __restrict__ out_t)
{
    extern __shared__ unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    T* kbuf[2] = {smem, smem + maxbuf};
    T* tbuf[2] = {smem + 2 * maxbuf, smem + 3 * maxbuf};
    T* red = smem + 4 * maxbuf;

    const long long blk = blockIdx.x;
    const long long p = blk / ndelta;
    const int d = (int)(blk % ndelta);
    if (p >= npairs) return;
    const long long i = pi[p], j = pj[p];
    const int tid = threadIdx.x, nt = blockDim.x;
    const int* dl = deltas + (long long)d * (nops + 1) * 2;

    // ---- stage 0: K0 = <x_a, x_b> / C on the slab (zero outside)
    int cur = 0;
    {
        const int H = sdim[0], W = sdim[1];
        const int plh = spad[0], plw = spad[1], Hp = spad[2], Wp = spad[3];
        const int dh = dl[0], dw = dl[1];
        int h0, h1, w0, w1;
        valid_range(H, dh, circ, &h0, &h1);
        valid_range(W, dw, circ, &w0, &w1);
        for (int pos = tid; pos < Hp * Wp; pos += nt) {
            const int P = pos / Wp - plh, Q = pos % Wp - plw;
            T v = 0;
            if (P >= h0 && P < h1 && Q >= w0 && Q < w1) {
                const int Pb = wrap(P + dh, H), Qb = wrap(Q + dw, W);
                const T* a = X1 + ((i * H0 + P) * W0 + Q) * C;
                const T* b = X2 + ((j * H0 + Pb) * W0 + Qb) * C;
                for (int c = 0; c < C; ++c) v += a[c] * b[c];
                v = v / (T)C;
            }
            kbuf[0][pos] = v;
            tbuf[0][pos] = 0;
        }
    }
    bool ntk_zero = true;
    __syncthreads();

    for (int o = 0; o < nops; ++o) {
        const int* op = ops + o * 7;
        const int kind = op[0];
        const int H = sdim[2 * o], W = sdim[2 * o + 1];
        const int plh = spad[4 * o], plw = spad[4 * o + 1], Hp = spad[4 * o + 2], Wp = spad[4 * o + 3];
        const int dh = dl[2 * o], dw = dl[2 * o + 1];
        const T f0 = fpar[4 * o], f1 = fpar[4 * o + 1], f2 = fpar[4 * o + 2], f3 = fpar[4 * o + 3];
        if (kind == 0) {  // Conv: stencil + affine map into the other buffer
            const int fh = op[1], fw = op[2], sh = op[3], sw = op[4], standard = op[6];
            const int Ho = sdim[2 * o + 2], Wo = sdim[2 * o + 3];
            const int qlh = spad[4 * o + 4], qlw = spad[4 * o + 5];
            const int Hq = spad[4 * o + 6], Wq = spad[4 * o + 7];
            const bool use_t = want_ntk && !ntk_zero;
            if (circ) {  // wrap-fill the input margins
                for (int pos = tid; pos < Hp * Wp; pos += nt) {
                    const int r = pos / Wp, c = pos % Wp;
                    const int sr = plh + wrap(r - plh, H), sc = plw + wrap(c - plw, W);
                    if (sr != r || sc != c) {
                        kbuf[cur][pos] = kbuf[cur][sr * Wp + sc];
                        if (use_t) tbuf[cur][pos] = tbuf[cur][sr * Wp + sc];
                    }
                }
                __syncthreads();
            }
            int h0, h1, w0, w1;
            valid_range(Ho, dl[2 * o + 2], circ, &h0, &h1);
            valid_range(Wo, dl[2 * o + 3], circ, &w0, &w1);
            const int nxt = 1 - cur;
            for (int pos = tid; pos < Hq * Wq; pos += nt) {
                const int P = pos / Wq - qlh, Q = pos % Wq - qlw;
                T kn = 0, tn = 0;
                if (P >= h0 && P < h1 && Q >= w0 && Q < w1) {
                    T ks = 0, ts = 0;
                    for (int eh = 0; eh < fh; ++eh) {
                        const T* kr = kbuf[cur] + (sh * P + eh) * Wp + sw * Q;
                        const T* tr = tbuf[cur] + (sh * P + eh) * Wp + sw * Q;
                        for (int ew = 0; ew < fw; ++ew) {
                            ks += kr[ew];
                            if (use_t) ts += tr[ew];
                        }
                    }
                    kn = f0 * ks + f1;
                    if (want_ntk) tn = standard ? f2 * ks + f0 * ts + f3 : kn + f0 * ts;
                }
                kbuf[nxt][pos] = kn;
                tbuf[nxt][pos] = tn;
            }
            cur = nxt;
            if (want_ntk) ntk_zero = false;
            __syncthreads();
            continue;
        }
        // pointwise ops on the valid part of the slab (in place)
        int h0, h1, w0, w1;
        valid_range(H, dh, circ, &h0, &h1);
        valid_range(W, dw, circ, &w0, &w1);
        const int voff = op[5], standard = op[6];
        for (int pos = tid; pos < Hp * Wp; pos += nt) {
            const int P = pos / Wp - plh, Q = pos % Wp - plw;
            if (!(P >= h0 && P < h1 && Q >= w0 && Q < w1)) {
                if (kind == 4 && want_ntk && ntk_zero) tbuf[cur][pos] = 0;
                continue;
            }
            const long long ia = (long long)i * nv + voff + P * W + Q;
            const long long ib = (long long)j * nv + voff + wrap(P + dh, H) * W + wrap(Q + dw, W);
            T c = kbuf[cur][pos];
            T dot = 1;
            if (kind == 1) {
                kbuf[cur][pos] = abrelu(c, S1[ia], S2[ib], f0, f1, tol, &dot);
                if (want_ntk) tbuf[cur][pos] *= dot;
            } else if (kind == 2) {
                kbuf[cur][pos] = erf_dual(c, Q1[ia], S1[ia], Q2[ib], S2[ib], f0, f1, f2, tol, &dot);
                if (want_ntk) tbuf[cur][pos] *= dot;
            } else if (kind == 4) {
                const T kn = f0 * c + f1;
                if (want_ntk) {
                    const T t = ntk_zero ? (T)0 : tbuf[cur][pos];
                    tbuf[cur][pos] = standard ? f2 * c + f0 * t + f3 : kn + f0 * t;
                }
                kbuf[cur][pos] = kn;
            }
        }
        if (kind == 4 && want_ntk) ntk_zero = false;
        __syncthreads();
    }

    // ---- final reduction: sum of the valid slab entries, one atomicAdd per pair
    {
        const int H = sdim[2 * nops], W = sdim[2 * nops + 1];
        const int plh = spad[4 * nops], plw = spad[4 * nops + 1], Wp = spad[4 * nops + 3];
        const int Hp = spad[4 * nops + 2];
        int h0, h1, w0, w1;
        valid_range(H, dl[2 * nops], circ, &h0, &h1);
        valid_range(W, dl[2 * nops + 1], circ, &w0, &w1);
        T sk = 0, st = 0;
        for (int pos = tid; pos < Hp * Wp; pos += nt) {
            const int P = pos / Wp - plh, Q = pos % Wp - plw;
            if (P >= h0 && P < h1 && Q >= w0 && Q < w1) {
                sk += kbuf[cur][pos];
                if (want_ntk && !ntk_zero) st += tbuf[cur][pos];
            }
        }
        red[tid] = sk;
        red[nt + tid] = st;
        __syncthreads();
        for (int s = nt / 2; s > 0; s >>= 1) {
            if (tid < s) {
                red[tid] += red[tid + s];
                red[nt + tid] += red[nt + tid + s];
            }
            __syncthreads();
        }
        if (tid == 0) {
            atomicAdd(out_k + p, red[0] * inv_count);
            if (want_ntk) atomicAdd(out_t + p, red[nt] * inv_count);
        }
    }
}
"""

_KERNELS: Dict[str, Any] = {}


def _kernel(dtype: np.dtype) -> Any:
    import cupy  # noqa: PLC0415  (optional dependency)

    name = "double" if dtype == np.float64 else "float"
    if name not in _KERNELS:
        _KERNELS[name] = cupy.RawKernel(_SOURCE.replace("__TYPE__", name), "slab_kernel")
    return _KERNELS[name]


def shared_bytes(prog: Any, itemsize: int) -> int:
    maxbuf = int((prog.spad[:, 2] * prog.spad[:, 3]).max())
    return (4 * maxbuf + 2 * THREADS) * itemsize


def unsupported(layers: List[LayerImpl], plan: ImagePlan, dtype: Any) -> Optional[str]:
    """Why this kernel cannot run the network on ``dtype`` inputs, or None:
    the slab conditions without AvgPool, and a slab that fits in shared memory."""
    why = slab_unsupported(layers, plan, pooling=False)
    if why is not None:
        return why
    dt = np.dtype(str(dtype))
    need = shared_bytes(Program(layers, plan, dt), dt.itemsize)
    if need > MAX_SHARED:
        return (f"a slab needs {need >> 10} KiB of shared memory, over the CUDA kernel's "
                f"{MAX_SHARED >> 10} KiB")
    return None


def run_pairs(prog: Any, x1: Any, x2: Any, v1: Any, v2: Any, pi: Any, pj: Any,
              want_ntk: bool) -> Tuple[Any, Any]:
    """Pooled Σ and Θ of the pairs ``(pi[p], pj[p])`` on the GPU."""
    import cupy  # noqa: PLC0415  (optional dependency)

    dtype = np.dtype(str(x1.dtype))
    kernel = _kernel(dtype)
    smem = shared_bytes(prog, dtype.itemsize)
    if smem > 48 * 1024:
        kernel.max_dynamic_shared_size_bytes = smem
    dev = _device_program(prog, dtype)
    s1 = cupy.sqrt(v1)
    s2 = s1 if v2 is v1 else cupy.sqrt(v2)
    npairs = int(pi.shape[0])
    ndelta = int(prog.deltas.shape[0])
    out_k = cupy.zeros(npairs, dtype)
    out_t = cupy.zeros(npairs, dtype)
    maxbuf = int((prog.spad[:, 2] * prog.spad[:, 3]).max())
    h0, w0, c = (int(s) for s in x1.shape[1:])
    step = max(1, MAX_BLOCKS // ndelta)
    for a in range(0, npairs, step):
        b = min(npairs, a + step)
        kernel((int((b - a) * ndelta),), (THREADS,),
               (x1, x2, np.int32(h0), np.int32(w0), np.int32(c), pi[a:b], pj[a:b],
                np.int64(b - a), dev["ops"], np.int32(prog.ops.shape[0]), dev["fpar"],
                dev["sdim"], dev["spad"], dev["deltas"], np.int32(ndelta),
                v1, s1, v2, s2, np.int32(v1.shape[1]), np.int32(maxbuf),
                dtype.type(prog.consts[15]), dtype.type(1.0 / prog.count),
                np.int32(prog.circ), np.int32(want_ntk), out_k[a:b], out_t[a:b]),
               shared_mem=smem)
    return out_k, out_t


def _device_program(prog: Any, dtype: np.dtype) -> Dict[str, Any]:
    import cupy  # noqa: PLC0415  (optional dependency)

    return {"ops": cupy.asarray(prog.ops.astype(np.int32)),
            "fpar": cupy.asarray(prog.fpar.astype(dtype)),
            "sdim": cupy.asarray(prog.sdim.astype(np.int32)),
            "spad": cupy.asarray(prog.spad.astype(np.int32)),
            "deltas": cupy.asarray(prog.deltas.astype(np.int32))}


def evaluate(layers: List[LayerImpl], plan: ImagePlan, x1: Any, x2: Optional[Any], *,
             want_ntk: bool, memory_budget: int) -> Dict[str, Any]:
    return cpu_slab.evaluate(layers, plan, x1, x2, want_ntk=want_ntk, memory_budget=memory_budget,
                              xp=namespace_of(x1), run_pairs=run_pairs)


def evaluate_diagonal(layers: List[LayerImpl], plan: ImagePlan, x: Any, *, want_ntk: bool,
                      memory_budget: int) -> Dict[str, Any]:
    return cpu_slab.evaluate_diagonal(layers, plan, x, want_ntk=want_ntk,
                                       memory_budget=memory_budget, xp=namespace_of(x),
                                       run_pairs=run_pairs)
