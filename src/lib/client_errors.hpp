// Internal to libconnredir (not installed): how a failed socket-option call
// becomes an Error. Separate so unit tests can check every errno's message
// without needing a kernel that produces it.
#pragma once

#include "connredir/error.hpp"

namespace connredir::detail {

enum class SockOp { QueryRecords, QueryContext, QueryFlow, SetRecords, OriginalDst, UdpFlow };

const char* op_name(SockOp op);
// Error{err, "OP(fd N): what happened and what to do"}; err is kept as is.
Error socket_option_error(SockOp op, int fd, int err);

}  // namespace connredir::detail
