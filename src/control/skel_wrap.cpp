// See skel_wrap.hpp: keep `struct connredir` away from `namespace connredir`.
#include "skel_wrap.hpp"

#include "connredir.skel.h"

void* connredir_skel_open(struct bpf_object** obj) {
  struct connredir* s = connredir__open();
  if (s && obj) *obj = s->obj;
  return s;
}

void connredir_skel_set_optval_words(void* skel, bool on) {
  static_cast<struct connredir*>(skel)->rodata->cfg_optval_words = on ? 1 : 0;
}

int connredir_skel_load(void* skel) {
  return connredir__load(static_cast<struct connredir*>(skel));
}

void connredir_skel_destroy(void* skel) {
  connredir__destroy(static_cast<struct connredir*>(skel));
}
