// How much of a file mapping the kernel maps with huge (PMD-sized, 2 MiB on
// x86-64) pages, as /proc/self/smaps reports it. Weights streamed through
// a huge-page mapping cost 512 times fewer TLB entries (docs/performance.md,
// "Huge pages, aligned tensors, AMX by matrix"); this says whether a
// checkpoint got them.
#pragma once

#include <cstdint>
#include <string_view>

namespace dsv2 {

// The sum of the "FilePmdMapped" fields, in bytes, of the mappings in
// `smaps` (the text of /proc/PID/smaps) that start in [begin, begin +
// length). Lines that do not parse are skipped.
int64_t FilePmdMappedBytes(std::string_view smaps, uintptr_t begin, uint64_t length);

// The same for this process's mappings (/proc/self/smaps); 0 where it
// cannot be read.
int64_t FilePmdMappedBytes(const void* begin, uint64_t length);

}  // namespace dsv2
