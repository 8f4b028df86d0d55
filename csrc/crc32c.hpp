// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI/ext4: crc32c("123456789")
// is 0xE3069283. Software slice-by-8; the SSE4.2 instruction when the CPU has it (chosen at run time,
// the build stays portable).
#pragma once
#include <cstddef>
#include <cstdint>

namespace mw {
// Continue a CRC: crc32c(b, crc32c(a)) == crc32c(a + b). Start with prev = 0.
uint32_t crc32c(const void* data, size_t n, uint32_t prev = 0);
uint32_t crc32c_sw(const void* data, size_t n, uint32_t prev = 0);
}  // namespace mw
