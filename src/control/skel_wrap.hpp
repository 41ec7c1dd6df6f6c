// The libbpf skeleton declares `struct connredir`, which clashes with C++
// `namespace connredir`; so only skel_wrap.cpp includes it, and the loader
// sees this opaque interface.
#pragma once

struct bpf_object;

// Opaque handle to the opened skeleton; nullptr + errno on failure.
void* connredir_skel_open(struct bpf_object** obj);
// 0 or a negative errno.
int connredir_skel_load(void* skel);
void connredir_skel_destroy(void* skel);
