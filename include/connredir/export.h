/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * CONNREDIR_API marks a function libconnredir exports. The shared library is
 * built with hidden visibility by default, so only what carries this mark
 * (or sits in a header that pushes default visibility) is callable from a
 * proxy linked against libconnredir.so.
 */
#ifndef CONNREDIR_EXPORT_H
#define CONNREDIR_EXPORT_H

#ifndef CONNREDIR_API
#if defined(__GNUC__) || defined(__clang__)
#define CONNREDIR_API __attribute__((visibility("default")))
#else
#define CONNREDIR_API
#endif
#endif

#endif /* CONNREDIR_EXPORT_H */
