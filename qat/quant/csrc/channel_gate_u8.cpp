// qat::channel_gate_u8 -- a whole int8 squeeze-and-excitation gate in one call.
//
//   y = quantize(dequantize(x) * gate[c]),   gate = t2[fc2(t1[fc1(avgpool(x))])]
//
// on quint8 NHWC codes. torch runs this as seven ops (dequantize, float pool, quantize, two fbgemm
// 1x1 convs on a 1x1 map at ~16 us each, a table, a float multiply with broadcast, quantize): about
// 50 us per gate in MobileNetV3-Large's TorchScript, 11-22 us here. Each step rounds where the op
// chain rounds:
// - pool: the exact integer sum, averaged in double, rounded to the pool grid;
// - fc1/fc2: exact int32 accumulation (uint8 codes x int8 weights, vpdpbusd), requantized as fbgemm
//   does with a float bias: round((acc + bias / (s_in * s_w)) * (s_in * s_w / s_out)) + zp, then clamped;
// - t1/t2: 256-entry tables (the reduce activation, the gate) evaluated by the int8 modules;
// - the multiply: (x - zx) * sx * gate[c], times 1 / s_out, rounded half to even.
// Built with -ffp-contract=off so no multiply-add fuses into a differently rounded FMA, and with
// -fopenmp so at::parallel_for shares torch's OpenMP threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_empty_affine_quantized.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

bool gate_simd() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return yes;
}

// Round half to even (cvtss2si under the default MXCSR, what std::nearbyint does, without its libm
// call that saves and restores the FP environment: 1200 of those cost ~15 us). The clamp to
// +-2^30 first keeps huge values from wrapping; every later clamp is to [0, 255] anyway.
inline int64_t round_even(float y) {
  return _mm_cvtss_si32(_mm_set_ss(std::min(std::max(y, -1073741824.0f), 1073741824.0f)));
}

inline uint8_t requant(int32_t acc, float bias_over, float mult, int64_t zp, int64_t lo) {
  const int64_t q = round_even((static_cast<float>(acc) + bias_over) * mult) + zp;
  return static_cast<uint8_t>(std::min<int64_t>(255, std::max<int64_t>(lo, q)));
}

// Per-channel sums of hw rows of NHWC codes (restrict: uint8_t may alias anything otherwise).
void pool_scalar(const uint8_t* __restrict x, int32_t* __restrict sums, int64_t hw, int64_t channels) {
  std::fill(sums, sums + channels, 0);
  for (int64_t p = 0; p < hw; ++p) {
    for (int64_t c = 0; c < channels; ++c) sums[c] += x[p * channels + c];
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void pool_avx512(const uint8_t* x, int32_t* sums, int64_t hw,
                                                                       int64_t channels) {
  for (int64_t c = 0; c < channels; c += 16) {
    const __mmask16 m = channels - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (channels - c)) - 1);
    __m512i acc = _mm512_setzero_si512();
    for (int64_t p = 0; p < hw; ++p) {
      acc = _mm512_add_epi32(acc, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x + p * channels + c)));
    }
    _mm512_mask_storeu_epi32(sums + c, m, acc);
  }
}

// out[r] = sum_k w[r, k] * a[k] - zp * rowsum[r]: uint8 codes a (their zero point zp) times int8
// weights, exact in int32. The weights are packed in blocks of 16 outputs x 4 inputs,
// [rows/16][cols/4][16][4], so one vpdpbusd (AVX-512 VNNI) does 64 multiply-adds into 16 outputs
// with no horizontal sums; rows and cols are padded with zero weights to multiples of 16 and 4.
void matvec_scalar(const int8_t* __restrict w, const uint8_t* __restrict a, const int32_t* __restrict rowsum,
                   int32_t zp, int32_t* __restrict out, int64_t row_blocks, int64_t col_quads) {
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t i = 0; i < 16; ++i) {
      int32_t acc = 0;
      for (int64_t q = 0; q < col_quads; ++q) {
        const int8_t* wq = w + ((rb * col_quads + q) * 16 + i) * 4;
        for (int64_t j = 0; j < 4; ++j) acc += static_cast<int32_t>(wq[j]) * a[q * 4 + j];
      }
      out[rb * 16 + i] = acc - zp * rowsum[rb * 16 + i];
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void matvec_vnni(
    const int8_t* w, const uint8_t* a, const int32_t* rowsum, int32_t zp, int32_t* out, int64_t row_blocks,
    int64_t col_quads) {
  const __m512i vzp = _mm512_set1_epi32(zp);
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    const int8_t* wb = w + rb * col_quads * 64;
    __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
    int64_t q = 0;
    for (; q + 2 <= col_quads; q += 2) {  // two chains hide vpdpbusd's latency
      int32_t a0, a1;
      std::memcpy(&a0, a + q * 4, 4);
      std::memcpy(&a1, a + q * 4 + 4, 4);
      acc0 = _mm512_dpbusd_epi32(acc0, _mm512_set1_epi32(a0), _mm512_loadu_si512(wb + q * 64));
      acc1 = _mm512_dpbusd_epi32(acc1, _mm512_set1_epi32(a1), _mm512_loadu_si512(wb + q * 64 + 64));
    }
    if (q < col_quads) {
      int32_t a0;
      std::memcpy(&a0, a + q * 4, 4);
      acc0 = _mm512_dpbusd_epi32(acc0, _mm512_set1_epi32(a0), _mm512_loadu_si512(wb + q * 64));
    }
    const __m512i corr = _mm512_mullo_epi32(vzp, _mm512_loadu_si512(rowsum + rb * 16));
    _mm512_storeu_si512(out + rb * 16, _mm512_sub_epi32(_mm512_add_epi32(acc0, acc1), corr));
  }
}

void scale_scalar(const uint8_t* x, uint8_t* y, int64_t rows, int64_t channels, const float* gate, int32_t zx,
                  float sx, float inv_scale, int32_t zp) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < channels; ++c) {
      const float v = static_cast<float>(static_cast<int32_t>(x[r * channels + c]) - zx) * sx * gate[c];
      const int64_t q = round_even(v * inv_scale) + zp;
      y[r * channels + c] = static_cast<uint8_t>(std::min<int64_t>(255, std::max<int64_t>(0, q)));
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void scale_avx512(const uint8_t* x, uint8_t* y, int64_t rows,
                                                                int64_t channels, const float* gate, int32_t zx,
                                                                float sx, float inv_scale, int32_t zp) {
  const __m512i vzx = _mm512_set1_epi32(zx), vzp = _mm512_set1_epi32(zp);
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
  const __m512 vsx = _mm512_set1_ps(sx), vinv = _mm512_set1_ps(inv_scale);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* xr = x + r * channels;
    uint8_t* yr = y + r * channels;
    for (int64_t c = 0; c < channels; c += 16) {
      const __mmask16 m = channels - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (channels - c)) - 1);
      const __m512i codes = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, xr + c));
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(codes, vzx)), vsx);
      v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, gate + c)), vinv);
      // cvtps rounds half to even under the default MXCSR, as std::nearbyint does.
      __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), vzp);
      q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
      _mm_mask_storeu_epi8(yr + c, m, _mm512_cvtepi32_epi8(q));
    }
  }
}

void check_weights(const at::Tensor& w, const at::Tensor& rowsum, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && w.dim() == 4 && w.size(0) * 16 >= rows &&
                  w.size(0) * 16 < rows + 16 && w.size(1) * 4 >= cols && w.size(1) * 4 < cols + 4 &&
                  w.size(2) == 16 && w.size(3) == 4,
              "qat::channel_gate_u8: ", name, " must be contiguous int8 [ceil(", rows, "/16), ceil(", cols,
              "/4), 16, 4]");
  TORCH_CHECK(rowsum.scalar_type() == at::kInt && rowsum.is_contiguous() && rowsum.numel() == w.size(0) * 16,
              "qat::channel_gate_u8: ", name, "'s row sums must be int32, one per padded row");
}

at::Tensor channel_gate_u8(const at::Tensor& qx, double pool_scale, int64_t pool_zp, const at::Tensor& w1,
                           const at::Tensor& rowsum1, const at::Tensor& bias1, const at::Tensor& mult1, int64_t zp1,
                           int64_t lo1, const at::Tensor& table1, int64_t mid_zp, const at::Tensor& w2,
                           const at::Tensor& rowsum2, const at::Tensor& bias2, const at::Tensor& mult2, int64_t zp2,
                           const at::Tensor& table2, const at::Tensor& gate_values, double scale, int64_t zero_point,
                           bool simd) {
  TORCH_CHECK(qx.scalar_type() == at::kQUInt8 && qx.qscheme() == at::kPerTensorAffine && qx.dim() == 4,
              "qat::channel_gate_u8 expects a 4-D per-tensor quint8 tensor");
  const int64_t n = qx.size(0), channels = qx.size(1), hw = qx.size(2) * qx.size(3), squeeze = bias1.numel();
  check_weights(w1, rowsum1, squeeze, channels, "w1");
  check_weights(w2, rowsum2, channels, squeeze, "w2");
  for (const at::Tensor* t : {&bias1, &mult1, &bias2, &mult2, &gate_values}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "qat::channel_gate_u8: float vectors expected");
  }
  TORCH_CHECK(mult1.numel() == squeeze && bias2.numel() == channels && mult2.numel() == channels &&
                  gate_values.numel() == 256 && table1.numel() == 256 && table2.numel() == 256 &&
                  table1.scalar_type() == at::kByte && table2.scalar_type() == at::kByte,
              "qat::channel_gate_u8: parameter sizes do not match the weights");
  const at::Tensor x = qx.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::_empty_affine_quantized(x.sizes(), x.options(), scale, zero_point, at::MemoryFormat::ChannelsLast);
  const bool vector = simd && gate_simd();
  const int32_t zx = static_cast<int32_t>(x.q_zero_point());
  const float sx = static_cast<float>(x.q_scale());
  const float inv_pool = 1.0f / static_cast<float>(pool_scale), inv_out = 1.0f / static_cast<float>(scale);
  const auto* t1 = table1.const_data_ptr<uint8_t>();
  const auto* t2 = table2.const_data_ptr<uint8_t>();
  const auto* gv = gate_values.const_data_ptr<float>();
  const float *b1 = bias1.const_data_ptr<float>(), *m1 = mult1.const_data_ptr<float>();
  const float *b2 = bias2.const_data_ptr<float>(), *m2 = mult2.const_data_ptr<float>();
  const auto matvec = vector ? matvec_vnni : matvec_scalar;
  const auto* x0 = static_cast<const uint8_t*>(x.const_data_ptr());
  auto* y0 = static_cast<uint8_t*>(out.data_ptr());
  // Images in parallel (batch 1 runs inline: its ~100k codes take a few microseconds, less than
  // a parallel region costs).
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> sums(channels), acc(std::max(w1.size(0), w2.size(0)) * 16);
    std::vector<uint8_t> a1(w1.size(1) * 4, 0), a2(w2.size(1) * 4, 0);
    std::vector<float> gate(channels);
    for (int64_t b = begin; b < end; ++b) {
      const uint8_t* xb = x0 + b * hw * channels;
      (vector ? pool_avx512 : pool_scalar)(xb, sums.data(), hw, channels);
      for (int64_t c = 0; c < channels; ++c) {
        const double mean = static_cast<double>(sums[c] - zx * hw) * sx / static_cast<double>(hw);
        const int64_t q = round_even(static_cast<float>(mean) * inv_pool) + pool_zp;
        a1[c] = static_cast<uint8_t>(std::min<int64_t>(255, std::max<int64_t>(0, q)));
      }
      matvec(w1.const_data_ptr<int8_t>(), a1.data(), rowsum1.const_data_ptr<int32_t>(),
             static_cast<int32_t>(pool_zp), acc.data(), w1.size(0), w1.size(1));
      for (int64_t s = 0; s < squeeze; ++s) a2[s] = t1[requant(acc[s], b1[s], m1[s], zp1, lo1)];
      matvec(w2.const_data_ptr<int8_t>(), a2.data(), rowsum2.const_data_ptr<int32_t>(),
             static_cast<int32_t>(mid_zp), acc.data(), w2.size(0), w2.size(1));
      for (int64_t c = 0; c < channels; ++c) gate[c] = gv[t2[requant(acc[c], b2[c], m2[c], zp2, 0)]];
      (vector ? scale_avx512 : scale_scalar)(xb, y0 + b * hw * channels, hw, channels, gate.data(), zx, sx, inv_out,
                                             static_cast<int32_t>(zero_point));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(qat, m) {
  m.def(
      "channel_gate_u8(Tensor qx, float pool_scale, int pool_zp, Tensor w1, Tensor rowsum1, Tensor bias1, "
      "Tensor mult1, int zp1, int lo1, Tensor table1, int mid_zp, Tensor w2, Tensor rowsum2, Tensor bias2, "
      "Tensor mult2, int zp2, Tensor table2, Tensor gate_values, float scale, int zero_point, bool simd=True) -> Tensor");
  m.def("channel_gate_simd() -> bool", &gate_simd);
}

TORCH_LIBRARY_IMPL(qat, QuantizedCPU, m) { m.impl("channel_gate_u8", channel_gate_u8); }
