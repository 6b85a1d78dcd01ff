"""Commit through the Python ovs IDL: insert a switch and a port, then setkey/delkey.

usage: idl_commit.py REMOTE SCHEMA_PATH
"""
import sys
import time

import ovs.db.idl
import ovs.poller

remote, schema_path = sys.argv[1], sys.argv[2]
helper = ovs.db.idl.SchemaHelper(location=schema_path)
helper.register_all()
idl = ovs.db.idl.Idl(remote, helper)


def wait_until(cond, what, timeout=15):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            sys.exit(f"timeout waiting for {what}")
        idl.run()
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(100)
        poller.block()


wait_until(lambda: idl.run() or idl.has_ever_connected(), "connection")


def commit(build):
    while True:
        txn = ovs.db.idl.Transaction(idl)
        build(txn)
        status = txn.commit_block()
        if status == txn.TRY_AGAIN:
            wait_until(lambda: True, "retry")
            continue
        if status not in (txn.SUCCESS, txn.UNCHANGED):
            sys.exit(f"commit failed: {status} {txn.get_error()}")
        return


def add(txn):
    ls = txn.insert(idl.tables["Logical_Switch"])
    ls.name = "py-sw"
    lsp = txn.insert(idl.tables["Logical_Switch_Port"])
    lsp.name = "py-port"
    lsp.options = {"gone": "1"}
    ls.ports = [lsp]


commit(add)
wait_until(lambda: any(r.name == "py-port" for r in idl.tables["Logical_Switch_Port"].rows.values()), "port in cache")
port = next(r for r in idl.tables["Logical_Switch_Port"].rows.values() if r.name == "py-port")


def keys(txn):
    port.setkey("options", "py", "1")
    port.delkey("options", "gone")


commit(keys)
print("committed")
idl.close()
