// The libbpf skeleton declares `struct connredir`, which clashes with C++
// `namespace connredir`; so only skel_wrap.cpp includes it, and the loader
// sees this opaque interface.
#pragma once

struct bpf_object;

// Opaque handle to the opened skeleton; nullptr + errno on failure.
void* connredir_skel_open(struct bpf_object** obj);
// Before load: let the socket-option programs copy their buffers in 8-byte
// words (bpf/lib/sockopt.h, cfg_optval_words; only where the kernel allows
// it, see probe_sockopt_word_access).
void connredir_skel_set_optval_words(void* skel, bool on);
// 0 or a negative errno.
int connredir_skel_load(void* skel);
void connredir_skel_destroy(void* skel);
