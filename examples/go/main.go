// connredir-example-go: a minimal inspection proxy in Go (standard library and
// syscall only) that takes part in a connredir proxy chain. Copy it, then put
// your inspection where it says "inspect here".
//
//	connredir-example-go --listen ADDR:PORT [--log FILE]
//
// For every connection connredir redirects to ADDR:PORT it reads the redirect
// records and context (with the original destination) in one plain getsockopt(), logs the
// flow as one JSON line (to FILE, or standard output) when it ends, and relays
// it to the original destination with the records attached (setsockopt in the
// dialer's Control hook, which runs before connect), so the flow passes every
// vendor's proxy exactly once.
//
// Build: go build   (no dependencies, works offline)
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"unsafe"
)

// The socket-option contract: docs/ABI.md (abi/connredir_abi.h).
const (
	solConnredir       = 0x4352
	connredirRecords   = 1   // set: attach the records blob before connect()
	connredirFlow      = 4   // get: records and context back to back (struct connredir_flow_view)
	recordsSize        = 472 // sizeof(struct connredir_records): the view's first part
	flowSize           = 704 // sizeof(struct connredir_flow_view)
	afInet             = 2
	connredirHopsStart = 80 // records layout, for the log only
	connredirHopSize   = 48
)

// getsockopt into a byte buffer: package syscall has no generic form.
func getsockopt(fd uintptr, level, name int, buf []byte) ([]byte, error) {
	n := uint32(len(buf))
	_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return nil, e
	}
	return buf[:n], nil
}

// addrText formats a struct connredir_addr (20 bytes): 16 address bytes (IPv4
// as ::ffff:a.b.c.d), the port in network order, the family (host order).
func addrText(raw []byte) string {
	port := int(binary.BigEndian.Uint16(raw[16:18]))
	if binary.LittleEndian.Uint16(raw[18:20]) == afInet {
		return net.JoinHostPort(net.IP(raw[12:16]).String(), strconv.Itoa(port))
	}
	return net.JoinHostPort(net.IP(raw[0:16]).String(), strconv.Itoa(port))
}

type hop struct {
	CalloutID uint32 `json:"callout_id"`
	FilterID  uint32 `json:"filter_id"`
	Dst       string `json:"dst"`
}

type flowLog struct {
	Proxy     string `json:"proxy"`
	FlowID    uint64 `json:"flow_id"`
	Chain     []hop  `json:"chain"`
	CalloutID uint32 `json:"callout_id"`
	Hop       uint8  `json:"hop"`
	OrigDst   string `json:"orig_dst"`
	BytesUp   int64  `json:"bytes_up"`
	BytesDown int64  `json:"bytes_down"`
	Result    string `json:"result"`
}

var (
	logMu  sync.Mutex
	logOut io.Writer = os.Stdout
)

// write logs one JSON line per flow: the callout ids of the chain (oldest
// first; the last one is ours), where it was going, the bytes relayed.
func (f *flowLog) write() {
	line, _ := json.Marshal(f)
	logMu.Lock()
	defer logMu.Unlock()
	logOut.Write(append(line, '\n'))
}

// pump copies from -> to until EOF, then passes the EOF on (half-close), so
// each side can finish sending after the other stopped.
func pump(from, to *net.TCPConn, n *int64) {
	// inspect here: wrap `from` in a reader that looks at the bytes
	written, err := io.Copy(to, from)
	*n = written
	if err != nil { // a side is gone: end both directions
		from.Close()
		to.Close()
		return
	}
	to.CloseWrite()
}

func handleFlow(client *net.TCPConn) {
	defer client.Close()
	rec := flowLog{Proxy: "go", Chain: []hop{}, Result: "ok"}
	defer rec.write()
	raw, err := client.SyscallConn()
	if err != nil {
		rec.Result = "syscall conn: " + err.Error()
		return
	}

	var view []byte
	var qerr error
	raw.Control(func(fd uintptr) {
		// 1. The flow, in one system call: the redirect records (the opaque
		//    proof of which vendors' proxies this flow already passed) and the
		//    redirect context (which of our callout's filters sent it here,
		//    and where the application wanted to go). ENOENT means nobody
		//    redirected it (a client connected to the proxy port directly):
		//    nowhere to relay it. (A connredir older than CONNREDIR_FLOW
		//    answers ENOPROTOOPT: ask for records (1) and context (2) alone.)
		view, qerr = getsockopt(fd, solConnredir, connredirFlow, make([]byte, flowSize))
	})
	if errors.Is(qerr, syscall.ENOENT) {
		qerr = errors.New("not redirected by connredir")
	}
	if qerr != nil {
		rec.Result = "query_flow failed: " + qerr.Error()
		return
	}
	records, ctx := view[:recordsSize], view[recordsSize:]
	// Decoded only for the log; the records bytes are passed on unchanged.
	rec.FlowID = binary.LittleEndian.Uint64(records[8:16])
	for i := 0; i < int(records[16]); i++ {
		h := records[connredirHopsStart+connredirHopSize*i:]
		rec.Chain = append(rec.Chain, hop{binary.LittleEndian.Uint32(h[0:4]),
			binary.LittleEndian.Uint32(h[4:8]), addrText(h[16:36])})
	}
	rec.CalloutID = binary.LittleEndian.Uint32(ctx[16:20])
	rec.Hop = ctx[96]
	// 2. Where the application wanted to go: the context's orig_dst. (Proxies
	//    written for iptables REDIRECT can ask SO_ORIGINAL_DST instead, at the
	//    cost of a system call.)
	rec.OrigDst = addrText(ctx[24:44])

	// 3. The onward socket, with the records attached BEFORE connect(): the
	//    dialer's Control hook runs after socket() and before connect(). The
	//    kernel then knows this connect continues the same flow, skips our
	//    callout and lets the next vendor's callout (if any) redirect it.
	var setErr error
	dialer := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		if err := c.Control(func(fd uintptr) {
			setErr = syscall.SetsockoptString(int(fd), solConnredir, connredirRecords, string(records))
		}); err != nil {
			return err
		}
		return setErr // a failure here aborts the dial: no connect without records
	}}
	// 4. Connect to the original destination. If another vendor's filter
	//    covers it, connredir redirects this connect to that vendor's proxy.
	conn, err := dialer.Dial("tcp", rec.OrigDst)
	if setErr != nil {
		// Never connect without the records: that connect would start a new
		// chain and the flow would be redirected, and inspected, all over
		// again. EACCES (we are not the callout's --proxy-uid/--proxy-cgroup)
		// and ENOPROTOOPT (we run outside the cgroups `connredir up` attached
		// to) are misconfigurations: fail the flow and say so loudly.
		hint := ""
		if errors.Is(setErr, syscall.EACCES) {
			hint = " (not a principal: run as the callout's --proxy-uid, or `connredir authorize`)"
		} else if errors.Is(setErr, syscall.ENOPROTOOPT) {
			hint = " (connredir is not attached to this process's cgroup)"
		}
		log.Printf("NOT relaying flow %d to %s: set records: %v%s", rec.FlowID, rec.OrigDst, setErr, hint)
		rec.Result = "set_records failed: " + setErr.Error() + hint
		return
	}
	if err != nil {
		rec.Result = "connect to " + rec.OrigDst + " failed: " + err.Error()
		return
	}
	server := conn.(*net.TCPConn)
	defer server.Close()

	// 5. Relay both directions until both sides closed.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); pump(server, client, &rec.BytesDown) }()
	pump(client, server, &rec.BytesUp)
	wg.Wait()
}

func main() {
	listen := flag.String("listen", "", "ADDR:PORT or [ADDR]:PORT to listen on")
	logPath := flag.String("log", "", "append one JSON line per flow here (default: stdout)")
	flag.Parse()
	log.SetPrefix("connredir-example-go: ")
	if *listen == "" {
		fmt.Fprintln(os.Stderr, "usage: connredir-example-go --listen ADDR:PORT [--log FILE]")
		os.Exit(2)
	}
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		logOut = f
	}
	// The proxy's address must be the one its callout names (`connredir
	// callout add NAME --proxy ADDR:PORT --proxy-uid UID`), and only root or
	// that principal may bind it.
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("listening on %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go handleFlow(c.(*net.TCPConn))
	}
}
