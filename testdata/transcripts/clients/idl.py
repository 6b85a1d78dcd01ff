"""Drives the Python `ovs` IDL for the `python-idl` transcript: insert a switch and a port in one
transaction, then change the port's options with setkey/delkey in a second one.

usage: idl.py REMOTE NB_SCHEMA_PATH   (run with Debian's /usr/bin/python3)
"""
import sys
import time

import ovs.db.idl
import ovs.poller

remote, schema_path = sys.argv[1], sys.argv[2]
helper = ovs.db.idl.SchemaHelper(location=schema_path)
helper.register_columns("Logical_Switch", ["name", "ports"])
helper.register_columns("Logical_Switch_Port", ["name", "options", "addresses"])
idl = ovs.db.idl.Idl(remote, helper)


def run_until(cond, what, timeout=15):
    deadline = time.time() + timeout
    while True:
        idl.run()
        if cond():
            return
        if time.time() > deadline:
            sys.exit(f"timeout waiting for {what}")
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(100)
        poller.block()


def commit(build):
    while True:
        txn = ovs.db.idl.Transaction(idl)
        build(txn)
        status = txn.commit_block()
        if status == txn.TRY_AGAIN:
            run_until(lambda: True, "retry")
            continue
        if status not in (txn.SUCCESS, txn.UNCHANGED):
            sys.exit(f"commit failed: {status} {txn.get_error()}")
        return


def port(name):
    return next((r for r in idl.tables["Logical_Switch_Port"].rows.values() if r.name == name), None)


run_until(idl.has_ever_connected, "the initial contents")


def add(txn):
    ls = txn.insert(idl.tables["Logical_Switch"])
    ls.name = "idl-sw"
    lsp = txn.insert(idl.tables["Logical_Switch_Port"])
    lsp.name = "idl-port"
    lsp.addresses = ["00:00:00:00:00:0a 10.0.0.10"]
    lsp.options = {"gone": "1"}
    ls.ports = [lsp]


commit(add)
run_until(lambda: port("idl-port") is not None, "the port in the cache")


def keys(txn):
    p = port("idl-port")
    p.setkey("options", "requested-chassis", "hv1")
    p.delkey("options", "gone")


commit(keys)
run_until(lambda: port("idl-port").options.get("requested-chassis") == "hv1", "the new options")
idl.close()
print("done")
