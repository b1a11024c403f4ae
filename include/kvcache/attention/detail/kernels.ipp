// The attention family's generic kernel bodies, compiled once per ISA by attention/detail/kernels.hpp.
#include "kvcache/attention/detail/decode.ipp"
#include "kvcache/attention/detail/prefill.ipp"
