# bpf_object(NAME SOURCE [DEPENDS headers...])
# Compiles SOURCE with clang -target bpf into NAME.bpf.o and generates the
# libbpf skeleton NAME.skel.h with bpftool. Creates an INTERFACE target
# NAME_skel whose include directory holds the skeleton; link it to use it.
find_program(BPF_CLANG NAMES clang-14 clang REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)

set(BPF_VMLINUX_DIR ${CMAKE_BINARY_DIR}/vmlinux)
set(BPF_VMLINUX_H ${BPF_VMLINUX_DIR}/vmlinux.h)
# vmlinux.h from the running kernel's BTF; CO-RE relocates it to any kernel.
add_custom_command(
  OUTPUT ${BPF_VMLINUX_H}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${BPF_VMLINUX_DIR}
  COMMAND ${BPFTOOL} btf dump file /sys/kernel/btf/vmlinux format c > ${BPF_VMLINUX_H}.tmp
  COMMAND ${CMAKE_COMMAND} -E rename ${BPF_VMLINUX_H}.tmp ${BPF_VMLINUX_H}
  COMMENT "Generating vmlinux.h from /sys/kernel/btf/vmlinux"
  VERBATIM)
add_custom_target(vmlinux_h DEPENDS ${BPF_VMLINUX_H})

# Same policy as the C++ code: -Werror only with CONNREDIR_WERROR.
if(CONNREDIR_WERROR)
  set(BPF_WERROR -Werror)
else()
  set(BPF_WERROR "")
endif()

function(bpf_object NAME SOURCE)
  cmake_parse_arguments(BPF "" "" "DEPENDS" ${ARGN})
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/${NAME}_skel)
  set(obj ${out_dir}/${NAME}.bpf.o)
  set(skel ${out_dir}/${NAME}.skel.h)
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${out_dir}
    COMMAND ${BPF_CLANG} -target bpf -mcpu=v3 -g -O2 -D__TARGET_ARCH_x86
            -Wall -Wextra ${BPF_WERROR} -Wno-unused-parameter
            -I${BPF_VMLINUX_DIR} -I${CONNREDIR_ABI_DIR}
            -c ${CMAKE_CURRENT_SOURCE_DIR}/${SOURCE} -o ${obj}
    # vmlinux_h is a target in another directory: depend on it by name.
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${SOURCE} vmlinux_h ${BPF_DEPENDS}
    COMMENT "BPF ${SOURCE}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${BPFTOOL} gen skeleton ${obj} name ${NAME} > ${skel}.tmp
    COMMAND ${CMAKE_COMMAND} -E rename ${skel}.tmp ${skel}
    DEPENDS ${obj}
    COMMENT "Skeleton ${NAME}.skel.h"
    VERBATIM)
  add_custom_target(${NAME}_skel_gen DEPENDS ${skel})
  add_library(${NAME}_skel INTERFACE)
  add_dependencies(${NAME}_skel ${NAME}_skel_gen)
  target_include_directories(${NAME}_skel INTERFACE ${out_dir} ${CONNREDIR_ABI_DIR})
  target_link_libraries(${NAME}_skel INTERFACE PkgConfig::LIBBPF)
endfunction()
