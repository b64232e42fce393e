# A client for Service tests, run inside a pod's or node's namespace (and
# cgroup). One line of output per attempt:
#   ok peer=<getpeername or reply source> answer=<first line of the reply>
#   err <errno name>
# Modes:
#   tcp IP PORT N [GAP_MS]   N fresh TCP connections, GAP_MS apart
#   udp IP PORT N            N connected UDP sockets, one datagram each
#   sendto IP PORT N         N datagrams from one unconnected UDP socket
#   stream IP PORT SECONDS   one TCP connection kept open, a line each 50 ms;
#                            prints each echoed line's round trip, then "done"
#   udp-serve IP PORT NAME   a UDP server answering every datagram with NAME
#                            (a datagram over 200 bytes: NAME, a newline and
#                            the datagram itself, an echo)
#   udp-big IP PORT N SIZE   N connected UDP sockets, one SIZE-byte datagram
#                            each; ok only if the echo comes back whole
#   tcp-echo-serve IP PORT NAME  a TCP server: per connection, reads to the
#                            end, answers NAME, a newline and what it read
#   tcp-big IP PORT N SIZE   N TCP connections, SIZE bytes each then the
#                            write side shut; ok only if the echo comes
#                            back whole (to a tcp-echo-serve)
#   udp-stream IP PORT SECONDS  one connected UDP socket, a datagram each 50 ms
#                            (waiting on the socket, so an error wakes it); on
#                            an error prints it (the socket's pending error
#                            first: what destroyed it) and connects a new
#                            socket, as a resolver would; then "done"
import errno
import os
import select
import socket
import sys
import time

mode, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def err(e):
    print("err", errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__, flush=True)


def first_line(data):
    return data.decode(errors="replace").split("\n")[0].strip()


gap = float(sys.argv[5]) / 1000 if len(sys.argv) > 5 else 0
family = socket.AF_INET6 if ":" in ip else socket.AF_INET


def addr(sa):
    """host:port of a socket address, [host]:port for IPv6."""
    return ("[%s]:%d" if len(sa) == 4 else "%s:%d") % sa[:2]


if mode == "tcp":
    for _ in range(int(n)):
        time.sleep(gap)
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((ip, port))
            peer = addr(s.getpeername())
            data = s.recv(200)
            s.close()
            print("ok peer=%s answer=%s" % (peer, first_line(data)), flush=True)
        except OSError as e:
            err(e)
elif mode == "udp":
    for _ in range(int(n)):
        try:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((ip, port))
            peer = addr(s.getpeername())
            s.send(b"q\n")
            data, src = s.recvfrom(200)
            s.close()
            print("ok peer=%s answer=%s getpeername=%s" % (addr(src), first_line(data), peer), flush=True)
        except OSError as e:
            err(e)
elif mode == "sendto":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(int(n)):
        try:
            s.sendto(b"q\n", (ip, port))
            data, src = s.recvfrom(200)
            print("ok peer=%s answer=%s" % (addr(src), first_line(data)), flush=True)
        except OSError as e:
            err(e)
elif mode == "udp-serve":
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        # IPv6 only, so "::" and "0.0.0.0" can both be bound on one port
        # (a dual-stack pod's two servers).
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((ip, port))
    while True:
        data, src = s.recvfrom(65535)
        s.sendto(n.encode() + b"\n" + (data if len(data) > 200 else b""), src)
elif mode == "udp-big":
    size = int(sys.argv[5])
    for i in range(int(n)):
        try:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((ip, port))
            data = bytes((i + j) % 251 for j in range(size))
            s.send(data)
            reply, src = s.recvfrom(65535)
            s.close()
            name, _, echoed = reply.partition(b"\n")
            if echoed == data:
                print("ok peer=%s answer=%s" % (addr(src), name.decode(errors="replace")), flush=True)
            else:
                print("err ECHO_%d_OF_%d_BYTES" % (len(echoed), size), flush=True)
        except OSError as e:
            err(e)
elif mode == "tcp-echo-serve":
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((ip, port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(5)
            got = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
            c.sendall(n.encode() + b"\n" + got)
        except OSError:
            pass
        c.close()
elif mode == "tcp-big":
    size = int(sys.argv[5])
    for i in range(int(n)):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect((ip, port))
            peer = addr(s.getpeername())
            data = bytes((i + j) % 251 for j in range(size))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            s.close()
            name, _, echoed = reply.partition(b"\n")
            if echoed == data:
                print("ok peer=%s answer=%s" % (peer, name.decode(errors="replace")), flush=True)
            else:
                print("err ECHO_%d_OF_%d_BYTES" % (len(echoed), size), flush=True)
        except OSError as e:
            err(e)
elif mode == "udp-stream":
    end = time.time() + float(n)
    s = None
    while time.time() < end:
        try:
            if s is None:
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.settimeout(1)
                s.connect((ip, port))
                print("connected", flush=True)
            s.send(b"q\n")
            print("ok answer=%s" % first_line(s.recv(200)), flush=True)
            if select.select([s], [], [], 0.05)[0]:
                s.recv(200)  # raises the pending error
                print("late answer", flush=True)
        except OSError as e:
            pending = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if s else 0
            err(OSError(pending, os.strerror(pending)) if pending else e)
            if s:
                s.close()
            s = None
            time.sleep(0.05)
    print("done", flush=True)
elif mode == "stream":
    end = time.time() + float(n)
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect((ip, port))
        i = 0
        while time.time() < end:
            t = time.time()
            s.sendall(b"line %d\n" % i)
            got = b""
            while not got.endswith(b"\n"):
                chunk = s.recv(200)
                if not chunk:
                    raise OSError(errno.ECONNRESET, "closed")
                got += chunk
            print("ok rtt_ms=%.2f" % ((time.time() - t) * 1000), flush=True)
            i += 1
            time.sleep(0.05)
        print("done", flush=True)
    except OSError as e:
        err(e)
