/* <connredir/winsock.h> must compile as C (Windows proxy code often is). */
#include <connredir/winsock.h>

static void CALLBACK routine(DWORD e, DWORD n, LPWSAOVERLAPPED ov, DWORD f) {
  (void)e;
  (void)n;
  (void)ov;
  (void)f;
}

int connredir_ws_c_header_check(void) {
  WSAOVERLAPPED ov = {0};
  WSATHREADID tid = {0};
  LPWSAOVERLAPPED_COMPLETION_ROUTINE cr = routine;
  SOCKET s = INVALID_SOCKET;
  DWORD n = 0;
  int err = 0;
  (void)tid;
  (void)cr;
  if (SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS != 0x980000DEu) return 1;
  if (sizeof(DWORD) != 4) return 2;
  /* A call through the C declarations: not a socket. */
  if (WSAIoctl(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, NULL, 0, &n, &ov, NULL) !=
      SOCKET_ERROR)
    return 3;
  if (WSAGetLastError() != WSAENOTSOCK) return 4;
  if (WSPIoctl(s, SIO_FLUSH, NULL, 0, NULL, 0, &n, NULL, NULL, NULL, &err) != SOCKET_ERROR ||
      err != WSAENOTSOCK)
    return 5;
  return 0;
}
