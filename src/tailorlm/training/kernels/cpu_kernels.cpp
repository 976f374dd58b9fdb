// tailorlm's CPU kernels for fp32 training, built on first use by training/cpu_kernels.py.
//
// 1. Causal attention over the examples of packed rows, forward and backward.
//
// Each example (a span of a row) attends only to itself. Threads take tasks from a shared counter, costliest
// first: (span, key-value head, block of queries) in the forward, (span, key-value head) in the backward, whose
// ∂K and ∂V sum over the span's query blocks. Queries go in blocks of BLOCK rows; the GROUP query heads that share
// a key-value head are stacked into one (GROUP * BLOCK, D) block, and each block multiplies only the keys up to
// its own end (the causal prefix, rounded up to BLOCK). The products are oneDNN's small-matrix kernels
// (at::native::cpublas::brgemm); softmax and its derivative run on rows of at most the span's length, in cache.
// The backward recomputes the probabilities from the saved log-sum-exp, as flash attention does.
//
// Layouts: q (B, T, H, D), k and v (B, T, KV, D), out (B, T, H, D), all contiguous; lse (B, H, T);
// spans (N, 3) int64 rows of (row, start, end). Outputs are zero at positions outside every span.
//
// 2. Softmax cross-entropy of a chunk of logits, in place: each row becomes softmax - one_hot(target), and the
// row's loss is returned. A row (the vocabulary, 49,152 floats for SmolLM2) stays in the core's L2 cache across
// the max, exp, sum and scale passes, where PyTorch's separate operations stream the whole chunk through memory
// once per pass.
//
// 3. SwiGLU (SiLU(gate) * up) and RMSNorm, forward and backward, each in one pass over its rows (PyTorch's
// operations make one pass per operation, and a new tensor for each).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t BLOCK = 64;

// exp(x) for -87 <= x <= 0 (arguments are shifted by the row maximum; below -87 it returns e^-87, about 1.6e-38):
// 2^n * e^r with |r| <= ln(2) / 2 and a degree-6 Taylor polynomial (relative error about 2e-7); written so that the
// compiler vectorizes the loops that call it.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.4426950408889634f);
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

constexpr int64_t LANES = 16;  // fixed-width inner loops that the compiler turns into vector instructions

// max(row[0..n))
inline float row_max(const float* row, int64_t n) {
  float lanes[LANES];
  std::fill(lanes, lanes + LANES, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int64_t l = 0; l < LANES; l++) lanes[l] = std::max(lanes[l], row[i + l]);
  float top = -std::numeric_limits<float>::infinity();
  for (; i < n; i++) top = std::max(top, row[i]);
  for (int64_t l = 0; l < LANES; l++) top = std::max(top, lanes[l]);
  return top;
}

// row[i] = exp(row[i] - shift) for i < n; returns their sum when `sum` is set.
inline float exp_shifted(float* row, int64_t n, float shift, bool sum) {
  for (int64_t i = 0; i < n; i++) row[i] = exp_nonpositive(row[i] - shift);
  if (!sum) return 0.0f;
  float lanes[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int64_t l = 0; l < LANES; l++) lanes[l] += row[i + l];
  float total = 0.0f;
  for (; i < n; i++) total += row[i];
  for (int64_t l = 0; l < LANES; l++) total += lanes[l];
  return total;
}

struct Span {
  int64_t row, start, length;
};

struct Shape {
  int64_t B, T, H, KV, D, G;
};

std::vector<Span> read_spans(const at::Tensor& spans) {
  TORCH_CHECK(spans.dim() == 2 && spans.size(1) == 3 && spans.scalar_type() == at::kLong,
              "spans must be an (N, 3) int64 tensor of (row, start, end)");
  auto s = spans.contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  std::vector<Span> out;
  for (int64_t i = 0; i < s.size(0); i++) {
    if (p[3 * i + 2] > p[3 * i + 1]) out.push_back({p[3 * i], p[3 * i + 1], p[3 * i + 2] - p[3 * i + 1]});
  }
  return out;
}

Shape check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (B, T, heads, D)");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "q, k, v must be CPU tensors");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "the packed attention kernel takes float32 tensors");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
  const int64_t H = q.size(2), KV = k.size(2);
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3), "q and k must match");
  TORCH_CHECK(KV > 0 && H % KV == 0, "query heads must be a multiple of key-value heads");
  return {q.size(0), q.size(1), H, KV, q.size(3), H / KV};
}

// Spans must lie in the batch and not overlap: tasks of different spans write their outputs without locks.
void check_spans(const std::vector<Span>& spans, const Shape& s) {
  std::vector<std::pair<int64_t, int64_t>> order;  // (row * T + start, end in the same numbering)
  for (const auto& sp : spans) {
    TORCH_CHECK(sp.row >= 0 && sp.row < s.B && sp.start >= 0 && sp.start + sp.length <= s.T,
                "a span lies outside the batch");
    order.emplace_back(sp.row * s.T + sp.start, sp.row * s.T + sp.start + sp.length);
  }
  std::sort(order.begin(), order.end());
  for (size_t i = 1; i < order.size(); i++) TORCH_CHECK(order[i].first >= order[i - 1].second, "spans overlap");
}

// Runs task(i) for i in [0, n) on all threads, taking tasks in the order given (longest first).
template <typename F>
void run_tasks(int64_t n, const F& task) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < n; i = next++) task(i);
    at::native::cpublas::brgemm_release(false);
  });
}

// C (M, N) = A (M, K) @ B (K, N), row-major with leading dimensions; C += ... when add.
inline void mm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool add) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, false);
}

// Copies the first min(L, width) keys (or values) of one head, (L, D) with row stride `stride`, into a transposed
// (D, width) buffer with row stride `ld` and/or a plain (width, D) buffer, zero beyond L.
void pack_heads(const float* src, int64_t stride, int64_t L, int64_t D, int64_t width, int64_t ld, float* transposed,
                float* plain) {
  const int64_t n_src = std::min(L, width);
  if (transposed != nullptr) {
    for (int64_t d = 0; d < D; d++) std::fill(transposed + d * ld + n_src, transposed + d * ld + width, 0.0f);
    for (int64_t n = 0; n < n_src; n++)
      for (int64_t d = 0; d < D; d++) transposed[d * ld + n] = src[n * stride + d];
  }
  if (plain != nullptr) {
    std::fill(plain + n_src * D, plain + width * D, 0.0f);
    for (int64_t n = 0; n < n_src; n++) std::memcpy(plain + n * D, src + n * stride, D * sizeof(float));
  }
}

}  // namespace

std::vector<at::Tensor> packed_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& spans_tensor, double scale_) {
  const Shape s = check_inputs(q, k, v);
  const auto spans = read_spans(spans_tensor);
  check_spans(spans, s);
  auto out = at::zeros_like(q);
  auto lse = at::zeros({s.B, s.H, s.T}, q.options());
  const float scale = static_cast<float>(scale_);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const int64_t D = s.D, G = s.G, M = G * BLOCK;

  // Tasks: (span, key-value head, query block), costlier blocks (longer causal prefixes) first.
  struct Task { int64_t span, head, block, cost; };
  std::vector<Task> tasks;
  for (int64_t i = 0; i < static_cast<int64_t>(spans.size()); i++)
    for (int64_t j = 0; j < s.KV; j++)
      for (int64_t b = 0; b * BLOCK < spans[i].length; b++) tasks.push_back({i, j, b, b + 1});
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const Task& task = tasks[t];
    const Span& sp = spans[task.span];
    const int64_t j = task.head, i0 = task.block * BLOCK, rows = std::min(BLOCK, sp.length - i0);
    const int64_t width = (task.block + 1) * BLOCK, keys = std::min(width, sp.length);
    thread_local std::vector<float> kt, vv, qs, sc, oc;
    kt.resize(D * width); vv.resize(width * D); qs.resize(M * D); sc.resize(M * width); oc.resize(M * D);
    const int64_t kv_stride = s.KV * D, q_stride = s.H * D;
    const int64_t base = sp.row * s.T + sp.start;  // first token of the span in (B, T)
    pack_heads(kp + base * kv_stride + j * D, kv_stride, keys, D, width, width, kt.data(), nullptr);
    pack_heads(vp + base * kv_stride + j * D, kv_stride, keys, D, width, width, nullptr, vv.data());
    std::fill(qs.begin(), qs.end(), 0.0f);
    for (int64_t g = 0; g < G; g++)
      for (int64_t r = 0; r < rows; r++) {
        const float* src = qp + (base + i0 + r) * q_stride + (j * G + g) * D;
        float* dst = qs.data() + (g * BLOCK + r) * D;
        for (int64_t d = 0; d < D; d++) dst[d] = src[d] * scale;
      }
    mm(M, width, D, qs.data(), D, kt.data(), width, sc.data(), width, false);
    std::vector<float> inverse(M, 0.0f);
    for (int64_t g = 0; g < G; g++)
      for (int64_t r = 0; r < BLOCK; r++) {
        float* row = sc.data() + (g * BLOCK + r) * width;
        if (r >= rows) {
          std::fill(row, row + width, 0.0f);
          continue;
        }
        const int64_t valid = i0 + r + 1;  // keys 0 .. i0 + r
        const float top = row_max(row, valid);
        const float sum = exp_shifted(row, valid, top, true);
        std::fill(row + valid, row + width, 0.0f);
        inverse[g * BLOCK + r] = 1.0f / sum;
        lp[(sp.row * s.H + j * G + g) * s.T + sp.start + i0 + r] = top + std::log(sum);
      }
    mm(M, D, width, sc.data(), width, vv.data(), D, oc.data(), D, false);
    for (int64_t g = 0; g < G; g++)
      for (int64_t r = 0; r < rows; r++) {
        const float* src = oc.data() + (g * BLOCK + r) * D;
        float* dst = op + (base + i0 + r) * q_stride + (j * G + g) * D;
        const float inv = inverse[g * BLOCK + r];
        for (int64_t d = 0; d < D; d++) dst[d] = src[d] * inv;
      }
  });
  return {out, lse};
}

std::vector<at::Tensor> packed_attention_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                                  const at::Tensor& lse, const at::Tensor& spans_tensor,
                                                  double scale_) {
  const Shape s = check_inputs(q, k, v);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes() && grad_out.is_contiguous() &&
                  out.is_contiguous() && grad_out.scalar_type() == at::kFloat,
              "grad_out and out must be contiguous float32 tensors shaped like q");
  TORCH_CHECK(lse.is_contiguous() && lse.dim() == 3 && lse.size(0) == s.B && lse.size(1) == s.H &&
                  lse.size(2) == s.T, "lse must be (B, H, T)");
  const auto spans = read_spans(spans_tensor);
  check_spans(spans, s);
  auto grad_q = at::zeros_like(q);
  auto grad_k = at::zeros_like(k);
  auto grad_v = at::zeros_like(v);
  const float scale = static_cast<float>(scale_);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *gop = grad_out.data_ptr<float>(), *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  float *dqp = grad_q.data_ptr<float>(), *dkp = grad_k.data_ptr<float>(), *dvp = grad_v.data_ptr<float>();
  const int64_t D = s.D, G = s.G, M = G * BLOCK;

  // Tasks: (span, key-value head); ∂K and ∂V of a span sum over its query blocks and the heads of the group.
  struct Task { int64_t span, head, cost; };
  std::vector<Task> tasks;
  for (int64_t i = 0; i < static_cast<int64_t>(spans.size()); i++)
    for (int64_t j = 0; j < s.KV; j++) tasks.push_back({i, j, spans[i].length * spans[i].length});
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

  run_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const Task& task = tasks[t];
    const Span& sp = spans[task.span];
    const int64_t j = task.head, L = sp.length;
    const int64_t padded = (L + BLOCK - 1) / BLOCK * BLOCK;
    // One row stride for every span of the call, so that oneDNN builds one small-matrix kernel per block width
    // rather than one per (width, span length) pair; 16 floats over a multiple of 64 so that the rows of a
    // transposed buffer do not all fall on the same cache sets.
    const int64_t ld = (s.T + BLOCK - 1) / BLOCK * BLOCK + 16;
    thread_local std::vector<float> kt, kk, vt, dkt, dvt, qs, qst, go, got, sc, dp, dq, delta, row_lse;
    kt.resize(D * ld); kk.resize(padded * D); vt.resize(D * ld); dkt.resize(D * ld); dvt.resize(D * ld);
    for (int64_t d = 0; d < D; d++) {
      std::fill(dkt.begin() + d * ld, dkt.begin() + d * ld + padded, 0.0f);
      std::fill(dvt.begin() + d * ld, dvt.begin() + d * ld + padded, 0.0f);
    }
    qs.resize(M * D); qst.resize(D * M); go.resize(M * D); got.resize(D * M);
    sc.resize(M * padded); dp.resize(M * padded); dq.resize(M * D); delta.resize(M); row_lse.resize(M);
    const int64_t kv_stride = s.KV * D, q_stride = s.H * D;
    const int64_t base = sp.row * s.T + sp.start;
    pack_heads(kp + base * kv_stride + j * D, kv_stride, L, D, padded, ld, kt.data(), kk.data());
    pack_heads(vp + base * kv_stride + j * D, kv_stride, L, D, padded, ld, vt.data(), nullptr);

    for (int64_t i0 = 0; i0 < L; i0 += BLOCK) {
      const int64_t rows = std::min(BLOCK, L - i0), width = i0 + BLOCK;
      std::fill(qs.begin(), qs.end(), 0.0f); std::fill(go.begin(), go.end(), 0.0f);
      for (int64_t g = 0; g < G; g++)
        for (int64_t r = 0; r < BLOCK; r++) {
          const int64_t m = g * BLOCK + r;
          if (r >= rows) { delta[m] = 0.0f; row_lse[m] = 0.0f; continue; }
          const int64_t offset = (base + i0 + r) * q_stride + (j * G + g) * D;
          float dot = 0.0f;
          for (int64_t d = 0; d < D; d++) {
            qs[m * D + d] = qp[offset + d] * scale;
            go[m * D + d] = gop[offset + d];
            dot += gop[offset + d] * op[offset + d];
          }
          delta[m] = dot;
          row_lse[m] = lp[(sp.row * s.H + j * G + g) * s.T + sp.start + i0 + r];
        }
      for (int64_t m = 0; m < M; m++)
        for (int64_t d = 0; d < D; d++) { qst[d * M + m] = qs[m * D + d]; got[d * M + m] = go[m * D + d]; }

      mm(M, width, D, qs.data(), D, kt.data(), ld, sc.data(), width, false);  // scores
      for (int64_t g = 0; g < G; g++)
        for (int64_t r = 0; r < BLOCK; r++) {
          const int64_t m = g * BLOCK + r;
          float* row = sc.data() + m * width;
          const int64_t valid = r < rows ? i0 + r + 1 : 0;
          exp_shifted(row, valid, row_lse[m], false);  // probabilities
          std::fill(row + valid, row + width, 0.0f);
        }
      mm(D, width, M, got.data(), M, sc.data(), width, dvt.data(), ld, true);  // ∂Vᵀ += ∂Oᵀ P
      mm(M, width, D, go.data(), D, vt.data(), ld, dp.data(), width, false);  // ∂P = ∂O Vᵀ
      for (int64_t m = 0; m < M; m++) {
        float* grad = dp.data() + m * width;
        const float* prob = sc.data() + m * width;
        const float dm = delta[m];
        for (int64_t n = 0; n < width; n++) grad[n] = prob[n] * (grad[n] - dm);  // ∂S
      }
      mm(M, D, width, dp.data(), width, kk.data(), D, dq.data(), D, false);  // ∂(scale Q) = ∂S K
      mm(D, width, M, qst.data(), M, dp.data(), width, dkt.data(), ld, true);  // ∂Kᵀ += (scale Q)ᵀ ∂S
      for (int64_t g = 0; g < G; g++)
        for (int64_t r = 0; r < rows; r++) {
          const float* src = dq.data() + (g * BLOCK + r) * D;
          float* dst = dqp + (base + i0 + r) * q_stride + (j * G + g) * D;
          for (int64_t d = 0; d < D; d++) dst[d] = src[d] * scale;
        }
    }
    for (int64_t n = 0; n < L; n++) {
      float* dk_row = dkp + (base + n) * kv_stride + j * D;
      float* dv_row = dvp + (base + n) * kv_stride + j * D;
      for (int64_t d = 0; d < D; d++) {
        dk_row[d] = dkt[d * ld + n];
        dv_row[d] = dvt[d * ld + n];
      }
    }
  });
  return {grad_q, grad_k, grad_v};
}

at::Tensor softmax_cross_entropy_(at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == at::kFloat &&
                  logits.device().is_cpu() && targets.device().is_cpu(),
              "logits must be a contiguous (C, V) float32 CPU tensor");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong,
              "targets must be (C,) int64");
  const int64_t C = logits.size(0), V = logits.size(1);
  auto target = targets.contiguous();
  const int64_t* yp = target.data_ptr<int64_t>();
  for (int64_t i = 0; i < C; i++) TORCH_CHECK(yp[i] >= 0 && yp[i] < V, "target ", yp[i], " is not in [0, ", V, ")");
  auto losses = at::empty({C}, logits.options());
  float* zp = logits.data_ptr<float>();
  float* lossp = losses.data_ptr<float>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      float* row = zp + i * V;
      const float picked = row[yp[i]];
      const float top = row_max(row, V);
      const float sum = exp_shifted(row, V, top, true);
      const float inverse = 1.0f / sum;
      for (int64_t n = 0; n < V; n++) row[n] *= inverse;
      row[yp[i]] -= 1.0f;
      lossp[i] = top + std::log(sum) - picked;
    }
  });
  return losses;
}

namespace {

// sigmoid(x) from exp(-|x|), which never overflows.
inline float sigmoid(float x) {
  const float e = exp_nonpositive(-std::fabs(x));
  const float inverse = 1.0f / (1.0f + e);
  return x >= 0.0f ? inverse : e * inverse;
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.is_contiguous() && b.is_contiguous() &&
                  a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.sizes() == b.sizes(),
              what, ": contiguous float32 tensors of one shape expected");
}

constexpr int64_t GRAIN = 16384;  // elements per thread chunk

}  // namespace

at::Tensor swiglu_forward(const at::Tensor& gate, const at::Tensor& up) {
  check_same(gate, up, "swiglu");
  auto out = at::empty_like(gate);
  const float *g = gate.data_ptr<float>(), *u = up.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, gate.numel(), GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) o[i] = g[i] * sigmoid(g[i]) * u[i];
  });
  return out;
}

std::vector<at::Tensor> swiglu_backward(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up) {
  check_same(gate, up, "swiglu");
  check_same(grad, gate, "swiglu backward");
  auto grad_gate = at::empty_like(gate);
  auto grad_up = at::empty_like(up);
  const float *d = grad.data_ptr<float>(), *g = gate.data_ptr<float>(), *u = up.data_ptr<float>();
  float *dg = grad_gate.data_ptr<float>(), *du = grad_up.data_ptr<float>();
  at::parallel_for(0, gate.numel(), GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float s = sigmoid(g[i]), silu = g[i] * s;
      du[i] = d[i] * silu;
      dg[i] = d[i] * u[i] * (s + silu * (1.0f - s));  // d silu / d gate = sigmoid + silu (1 - sigmoid)
    }
  });
  return {grad_gate, grad_up};
}

// weight * x / sqrt(mean(x²) + eps) over the last dimension; returns (out, rstd (rows,)).
std::vector<at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu() && x.is_contiguous() &&
                  x.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  weight.scalar_type() == at::kFloat && weight.dim() == 1 && x.size(-1) == weight.size(0),
              "rms_norm: contiguous float32 x (..., H) and weight (H,) expected");
  const int64_t H = weight.size(0), rows = x.numel() / H;
  auto out = at::empty_like(x);
  auto rstd = at::empty({rows}, x.options());
  const float *xp = x.data_ptr<float>(), *w = weight.data_ptr<float>();
  float *op = out.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, GRAIN / H), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float* row = xp + r * H;
      float lanes[LANES] = {};
      int64_t i = 0;
      for (; i + LANES <= H; i += LANES)
        for (int64_t l = 0; l < LANES; l++) lanes[l] += row[i + l] * row[i + l];
      float sum = 0.0f;
      for (; i < H; i++) sum += row[i] * row[i];
      for (int64_t l = 0; l < LANES; l++) sum += lanes[l];
      const float inverse = 1.0f / std::sqrt(sum / static_cast<float>(H) + static_cast<float>(eps));
      rp[r] = inverse;
      for (int64_t k = 0; k < H; k++) op[r * H + k] = w[k] * (row[k] * inverse);
    }
  });
  return {out, rstd};
}

// (∂x, ∂weight or an empty tensor) of rms_norm_forward.
std::vector<at::Tensor> rms_norm_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                          const at::Tensor& rstd, bool weight_grad) {
  check_same(grad, x, "rms_norm backward");
  const int64_t H = weight.size(0), rows = x.numel() / H;
  TORCH_CHECK(rstd.is_contiguous() && rstd.numel() == rows, "rms_norm backward: rstd must have one value per row");
  auto grad_x = at::empty_like(x);
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>(), *w = weight.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  float* dx = grad_x.data_ptr<float>();
  // ∂weight sums over rows: one partial sum per fixed block of rows, added in block order (the same result for
  // any number of threads).
  const int64_t block = std::max<int64_t>(1, GRAIN / H), blocks = (rows + block - 1) / block;
  std::vector<float> partial(weight_grad ? blocks * H : 0, 0.0f);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b++) {
      float* pw = weight_grad ? partial.data() + b * H : nullptr;
      for (int64_t r = b * block; r < std::min(rows, (b + 1) * block); r++) {
        const float *g = gp + r * H, *row = xp + r * H;
        const float inverse = rp[r];
        float lanes[LANES] = {};
        int64_t i = 0;
        for (; i + LANES <= H; i += LANES)
          for (int64_t l = 0; l < LANES; l++) lanes[l] += g[i + l] * w[i + l] * row[i + l];
        float dot = 0.0f;
        for (; i < H; i++) dot += g[i] * w[i] * row[i];
        for (int64_t l = 0; l < LANES; l++) dot += lanes[l];
        // ∂x = rstd (g w - normed mean(g w normed)), normed = x rstd
        const float mean = dot * inverse * inverse / static_cast<float>(H);
        for (int64_t k = 0; k < H; k++) dx[r * H + k] = inverse * (g[k] * w[k] - row[k] * mean);
        if (pw != nullptr)
          for (int64_t k = 0; k < H; k++) pw[k] += g[k] * (row[k] * inverse);
      }
    }
  });
  if (!weight_grad) return {grad_x, at::Tensor()};
  auto grad_w = at::zeros({H}, x.options());
  float* dw = grad_w.data_ptr<float>();
  for (int64_t b = 0; b < blocks; b++)
    for (int64_t k = 0; k < H; k++) dw[k] += partial[b * H + k];
  return {grad_x, grad_w};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("swiglu_forward", &swiglu_forward, "SiLU(gate) * up");
  m.def("swiglu_backward", &swiglu_backward, "(grad_gate, grad_up) of SiLU(gate) * up");
  m.def("rms_norm_forward", &rms_norm_forward, "RMSNorm: (out, rstd)");
  m.def("rms_norm_backward", &rms_norm_backward, "RMSNorm backward: (grad_x, grad_weight or undefined)");
  m.def("softmax_cross_entropy_", &softmax_cross_entropy_,
        "logits (C, V) become softmax - one_hot(targets) in place; returns each row's loss (C,)");
  m.def("attention_forward", &packed_attention_forward, "packed causal attention, forward: (out, lse)");
  m.def("attention_backward", &packed_attention_backward, "packed causal attention, backward: (grad_q, grad_k, grad_v)");
}
