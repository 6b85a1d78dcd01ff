"""Migration writes from Python clients, each as the real library sends it.

usage: migration_clients.py REMOTE SCHEMA_PATH SCENARIO PORT
scenarios:
  idl-setkey        Python IDL row.setkey('external_ids', 'migration-destination', 'hv2')
  idl-delkey        Python IDL row.delkey('external_ids', 'migration-destination')
  idl-verify-map    Python IDL row.verify('options'); row.options = {... 'foo': 'bar'} (whole map)
  ovsdbapp-db-set   ovsdbapp db_set external_ids migration-phase=succeeded
  ovsdbapp-options  ovsdbapp lsp_set_options (whole map, unaware of migration)
"""
import sys
import time

import ovs.db.idl
import ovs.poller

remote, schema_path, scenario, port_name = sys.argv[1:5]


def idl_scenario():
    helper = ovs.db.idl.SchemaHelper(location=schema_path)
    helper.register_all()
    idl = ovs.db.idl.Idl(remote, helper)

    def spin(cond, what):
        deadline = time.time() + 15
        while not cond():
            if time.time() > deadline:
                sys.exit(f"timeout waiting for {what}")
            idl.run()
            poller = ovs.poller.Poller()
            idl.wait(poller)
            poller.timer_wait(50)
            poller.block()

    def port():
        for r in idl.tables["Logical_Switch_Port"].rows.values():
            if r.name == port_name:
                return r
        return None

    spin(lambda: idl.run() or (idl.has_ever_connected() and port() is not None), "port in cache")
    txn = ovs.db.idl.Transaction(idl)
    row = port()
    if scenario == "idl-setkey":
        row.setkey("external_ids", "migration-destination", "hv2")
    elif scenario == "idl-delkey":
        row.delkey("external_ids", "migration-destination")
    elif scenario == "idl-verify-map":
        row.verify("options")
        opts = dict(row.options)
        opts["foo"] = "bar"
        opts["requested-chassis"] = "hv9"
        row.options = opts
    else:
        sys.exit(f"unknown scenario {scenario}")
    status = txn.commit_block()
    if status not in (txn.SUCCESS, txn.UNCHANGED):
        sys.exit(f"commit failed: {status} {txn.get_error()}")
    idl.close()


def ovsdbapp_scenario():
    from ovsdbapp.backend.ovs_idl import connection
    from ovsdbapp.schema.ovn_northbound import impl_idl

    conn = connection.Connection(idl=connection.OvsdbIdl.from_server(remote, "OVN_Northbound"), timeout=15)
    api = impl_idl.OvnNbApiIdlImpl(conn)
    if scenario == "ovsdbapp-db-set":
        api.db_set("Logical_Switch_Port", port_name, ("external_ids", {"migration-phase": "succeeded"})).execute(
            check_error=True
        )
    elif scenario == "ovsdbapp-options":
        api.lsp_set_options(port_name, foo="bar").execute(check_error=True)
    else:
        sys.exit(f"unknown scenario {scenario}")
    conn.stop()


if scenario.startswith("idl-"):
    idl_scenario()
else:
    ovsdbapp_scenario()
print("committed")
