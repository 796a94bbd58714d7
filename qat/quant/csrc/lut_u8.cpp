// qat::lut_u8 -- an elementwise int8 activation as a 256-entry byte table, the way an NPU runs it.
//
// out[i] = table[raw byte of qx[i]], returned as quint8 on (scale, zero_point) in qx's memory
// format. On CPUs with AVX-512 VBMI, 64 lookups take two vpermi2b and a blend; elsewhere a
// scalar loop (about as fast as evaluating the activation in float, which is why qat only
// routes through this op when the CPU has VBMI: see qat/quant/lut_kernel.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_empty_affine_quantized.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>

namespace {

void lut_scalar(const uint8_t* in, uint8_t* out, int64_t n, const uint8_t* table) {
  for (int64_t i = 0; i < n; ++i) out[i] = table[in[i]];
}

__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline __m512i lookup64(
    __m512i v, __m512i t0, __m512i t1, __m512i t2, __m512i t3) {
  // Bits 0-6 index 128 bytes of two registers; bit 7 picks the upper or lower half of the table.
  const __m512i lo = _mm512_permutex2var_epi8(t0, v, t1);
  const __m512i hi = _mm512_permutex2var_epi8(t2, v, t3);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi);
}

__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void lut_vbmi(
    const uint8_t* in, uint8_t* out, int64_t n, const uint8_t* table) {
  const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm512_storeu_si512(out + i, lookup64(_mm512_loadu_si512(in + i), t0, t1, t2, t3));
  }
  if (i < n) {
    const __mmask64 m = (1ULL << (n - i)) - 1;  // n - i < 64
    _mm512_mask_storeu_epi8(out + i, m, lookup64(_mm512_maskz_loadu_epi8(m, in + i), t0, t1, t2, t3));
  }
}

bool lut_simd() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi");
  return yes;
}

at::Tensor lut_u8(const at::Tensor& qx, const at::Tensor& table, double scale, int64_t zero_point, bool simd) {
  TORCH_CHECK(qx.scalar_type() == at::kQUInt8 || qx.scalar_type() == at::kQInt8,
              "qat::lut_u8 expects a quint8 or qint8 tensor, got ", qx.scalar_type());
  TORCH_CHECK(qx.qscheme() == at::kPerTensorAffine, "qat::lut_u8 expects a per-tensor quantized tensor");
  TORCH_CHECK(table.scalar_type() == at::kByte && table.numel() == 256 && table.is_contiguous() &&
                  table.device().is_cpu(),
              "qat::lut_u8 expects a contiguous CPU uint8 table of 256 entries");
  const auto format = qx.suggest_memory_format();
  const at::Tensor x = qx.contiguous(format);
  at::Tensor out =
      at::_empty_affine_quantized(x.sizes(), x.options().dtype(at::kQUInt8), scale, zero_point, format);
  const auto* in = static_cast<const uint8_t*>(x.const_data_ptr());
  auto* o = static_cast<uint8_t*>(out.data_ptr());
  const auto* t = table.const_data_ptr<uint8_t>();
  const bool vector = simd && lut_simd();
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    if (vector) {
      lut_vbmi(in + begin, o + begin, end - begin, t);
    } else {
      lut_scalar(in + begin, o + begin, end - begin, t);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(qat, m) {
  m.def("lut_u8(Tensor qx, Tensor table, float scale, int zero_point, bool simd=True) -> Tensor");
  m.def("lut_simd() -> bool", &lut_simd);
}

TORCH_LIBRARY_IMPL(qat, QuantizedCPU, m) { m.impl("lut_u8", lut_u8); }
