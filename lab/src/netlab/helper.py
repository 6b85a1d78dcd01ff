"""Traffic and VM-side helper of the real-packet lab (Python 3 standard library only).

Run inside a network namespace (`ip netns exec NS python3 helper.py ROLE ...`):

  vm    the VM's side: TCP echo, UDP echo, a sniffer on each VIF tap (which probe reached which
        copy of the port), and QEMU's announce (RARP) schedule on command. Commands on stdin,
        one per line: `rarp` (send the schedule; answers `{"rarp": <time of the first>}`),
        `reset` (forget what the sniffers saw), `dump` (answers the sniffers' counts), `quit`.
  peer  the other end: a TCP stream (a 16-byte counter every 1 ms, echoed by the VM, checked in
        order) and UDP probes every 2 ms (ICMP echo requests with `icmp`), for SECS seconds; then
        one JSON line: whether the stream survived, and when every echo and every probe's first
        reply arrived.
  sniff-rarp  the time of every RARP seen on an interface (a QEMU guest's announce on its tap).

Every time is `time.time()`: one clock for every namespace and for the driver.
"""

import json
import select
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
# QEMU's announce_self: 5 rounds, 50 ms first, +100 ms each (0, 50, 200, 450, 800 ms).
RARP_SCHEDULE = (0.0, 0.05, 0.2, 0.45, 0.8)


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rarp_frame(mac):
    m = bytes.fromhex(mac.replace(":", ""))
    frame = b"\xff" * 6 + m + struct.pack("!H", 0x8035)
    frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + m + b"\0" * 4 + m + b"\0" * 4
    return frame.ljust(60, b"\0")


def vm(args):
    ip, tcp_port, udp_port, iface, taps, mac = args
    taps = [t for t in taps.split(",") if t]
    seen = {t: set() for t in taps}
    lock = threading.Lock()

    def tcp_echo():
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((ip, int(tcp_port)))
        srv.listen(4)
        while True:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=echo_stream, args=(conn,), daemon=True).start()

    def echo_stream(conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        conn.close()

    def udp_echo():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, int(udp_port)))
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)

    def sniff(tap):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((tap, 0))
        while True:
            frame, addr = s.recvfrom(2048)
            if addr[2] == PACKET_OUTGOING or len(frame) < 42 or frame[12:14] != b"\x08\x00":
                continue
            ihl = (frame[14] & 0x0F) * 4
            if frame[23] != 17:
                continue
            udp = 14 + ihl
            dport = struct.unpack("!H", frame[udp + 2 : udp + 4])[0]
            if dport != int(udp_port) or len(frame) < udp + 16:
                continue
            seq = struct.unpack("!Q", frame[udp + 8 : udp + 16])[0]
            with lock:
                seen[tap].add(seq)

    for target, a in [(tcp_echo, ()), (udp_echo, ())] + [(sniff, (t,)) for t in taps]:
        threading.Thread(target=target, args=a, daemon=True).start()
    announce = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    announce.bind((iface, 0))
    frame = rarp_frame(mac)

    def send_rarps(start):
        for at in RARP_SCHEDULE:
            delay = start + at - time.time()
            if delay > 0:
                time.sleep(delay)
            announce.send(frame)

    out({"ready": True})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "rarp":
            start = time.time()
            announce.send(frame)
            out({"rarp": start})
            threading.Thread(target=send_rarps, args=(start + 1e-6,), daemon=True).start()
        elif cmd == "reset":
            with lock:
                for t in seen:
                    seen[t] = set()
            out({"reset": True})
        elif cmd == "dump":
            with lock:
                both = set.intersection(*seen.values()) if len(seen) > 1 else set()
                out({"seen": {t: len(s) for t, s in seen.items()}, "both": len(both)})
        elif cmd == "quit":
            break


def icmp_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class IcmpProbe:
    """Echo requests to `dst` (any host answers them: a QEMU guest's kernel too)."""

    def __init__(self, dst):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.s.connect((dst, 0))
        self.s.setblocking(False)
        self.ident = threading.get_native_id() & 0xFFFF

    def fileno(self):
        return self.s.fileno()

    def send(self, payload):
        seq = struct.unpack("!Q", payload[:8])[0] & 0xFFFF
        head = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq)
        csum = icmp_checksum(head + payload)
        self.s.send(struct.pack("!BBHHH", 8, 0, csum, self.ident, seq) + payload)

    def recv(self, n):
        while True:
            data = self.s.recv(n)
            ihl = (data[0] & 0x0F) * 4
            icmp = data[ihl:]
            if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == self.ident:
                return icmp[8:]


def ping(args):
    """One ICMP echo to ADDR every 100 ms until one is answered or SECS pass: {"ok": bool}."""
    dst, secs = args[0], float(args[1])
    probe, deadline, seq = IcmpProbe(dst), time.time() + secs, 0
    while time.time() < deadline:
        probe.send(struct.pack("!QQ", seq, 0))
        seq += 1
        r, _, _ = select.select([probe], [], [], 0.1)
        if r:
            try:
                probe.recv(2048)
                out({"ok": True})
                return
            except BlockingIOError:
                pass
    out({"ok": False})


def sniff_rarp(args):
    """Prints the time of every RARP leaving IFACE (the guest's announce, seen on its tap)."""
    (iface,) = args
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
    s.bind((iface, 0))
    out({"ready": True})
    while True:
        frame, addr = s.recvfrom(2048)
        if frame[12:14] == b"\x80\x35":
            out({"rarp": time.time()})


def peer(args):
    dst, tcp_port, udp_port, secs = args[:4]
    icmp = len(args) > 4 and args[4] == "icmp"
    secs = float(secs)
    result = {"tcp": {}, "udp": {}}
    start = time.time()
    end = start + secs
    # UDP probes every 2 ms.
    if icmp:
        u = IcmpProbe(dst)
    else:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect((dst, int(udp_port)))
        u.setblocking(False)
    sent_udp, replies = 0, {}
    # The TCP stream: a 16-byte record every 1 ms, echoed.
    t = socket.create_connection((dst, int(tcp_port)), timeout=5)
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t.setblocking(False)
    sent_tcp, echoed, in_order, error = 0, 0, True, None
    echo_times, pending_tx, rx_buf = [], b"", b""

    def take_echoes(arrived):
        """Consumes the whole 16-byte echoed records in rx_buf, checking their order."""
        nonlocal rx_buf, echoed, in_order
        while len(rx_buf) >= 16:
            n = struct.unpack("!Q", rx_buf[:8])[0]
            rx_buf = rx_buf[16:]
            if n != echoed:
                in_order = False
            echoed += 1
            echo_times.append(arrived)

    next_tcp, next_udp = start, start
    while True:
        now = time.time()
        if now >= end and not pending_tx:
            break
        if now < end:
            while next_tcp <= now:
                pending_tx += struct.pack("!QQ", sent_tcp, int(now * 1e6))
                sent_tcp += 1
                next_tcp += 0.001
            while next_udp <= now:
                try:
                    u.send(struct.pack("!QQ", sent_udp, int(now * 1e6)))
                except OSError:
                    pass
                sent_udp += 1
                next_udp += 0.002
        wait = max(0.0, min(next_tcp, next_udp) - time.time()) if now < end else 0.05
        want_w = [t] if pending_tx else []
        try:
            r, w, _ = select.select([t, u], want_w, [], wait)
        except OSError as e:
            error = str(e)
            break
        if w and pending_tx:
            try:
                n = t.send(pending_tx)
                pending_tx = pending_tx[n:]
            except BlockingIOError:
                pass
            except OSError as e:
                error = f"send: {e}"
                break
        if u in r:
            while True:
                try:
                    data = u.recv(2048)
                except BlockingIOError:
                    break
                seq = struct.unpack("!Q", data[:8])[0]
                replies.setdefault(seq, []).append(time.time())
        if t in r:
            try:
                data = t.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as e:
                error = f"recv: {e}"
                break
            if data == b"":
                error = "the VM closed the connection"
                break
            if data:
                rx_buf += data
                take_echoes(time.time())
        if time.time() > end + 10:
            error = error or "echoes did not catch up within 10 s"
            break
    # Let the last echoes and replies arrive.
    t.setblocking(True)
    t.settimeout(2)
    try:
        while echoed < sent_tcp and error is None:
            data = t.recv(65536)
            if not data:
                error = "the VM closed the connection"
                break
            rx_buf += data
            take_echoes(time.time())
    except OSError as e:
        error = error or f"final recv: {e}"
    time.sleep(0.05)
    while True:
        try:
            data = u.recv(2048)
        except (BlockingIOError, OSError):
            break
        replies.setdefault(struct.unpack("!Q", data[:8])[0], []).append(time.time())
    try:
        t.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    t.close()
    result["tcp"] = {
        "survived": error is None and in_order and echoed == sent_tcp,
        "error": error,
        "sent": sent_tcp,
        "echoed": echoed,
        "in_order": in_order,
        "echo_times": [round(x, 6) for x in echo_times],
    }
    result["udp"] = {
        "sent": sent_udp,
        "received": len(replies),
        "dup_replies": sum(1 for ts in replies.values() if len(ts) > 1),
        "reply_times": sorted(round(ts[0], 6) for ts in replies.values()),
    }
    result["start"], result["end"] = start, end
    out(result)


if __name__ == "__main__":
    role = sys.argv[1]
    {"vm": vm, "peer": peer, "sniff-rarp": sniff_rarp, "ping": ping}[role](sys.argv[2:])
