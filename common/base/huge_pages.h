// How much of a file mapping the kernel maps with huge (PMD-sized, 2 MiB on
// x86-64) pages, as /proc/self/smaps reports it. Weights streamed through
// a huge-page mapping cost 512 times fewer TLB entries (docs/performance.md,
// "Huge pages, aligned tensors, AMX by matrix"); this says whether a
// checkpoint got them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace dsv2 {

// The sum of the "FilePmdMapped" fields, in bytes, of the mappings in
// `smaps` (the text of /proc/PID/smaps) that start in [begin, begin +
// length). Lines that do not parse are skipped.
int64_t FilePmdMappedBytes(std::string_view smaps, uintptr_t begin, uint64_t length);

// The text of /proc/self/smaps ("" where it cannot be read). Reading it
// makes the kernel walk every mapping's page tables: read it once for many
// ranges.
std::string ReadSelfSmaps();

}  // namespace dsv2
