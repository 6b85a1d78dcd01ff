"""Drives ovsdbapp (what Neutron's OVN driver uses) for the `ovsdbapp` transcript: a switch and a
port in one transaction, then db_set and lsp_set_options on the port.

usage: ovsdbapp_client.py REMOTE NB_SCHEMA_PATH   (run with Debian's /usr/bin/python3)
"""
import sys

import ovs.db.idl
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl

remote, schema_path = sys.argv[1], sys.argv[2]
# The schema comes from the file, not a get_schema session: the transcript stays small.
helper = ovs.db.idl.SchemaHelper(location=schema_path)
idl = connection.OvsdbIdl.from_server(
    remote, "OVN_Northbound", helper=helper, helper_tables=["Logical_Switch", "Logical_Switch_Port"]
)
conn = connection.Connection(idl=idl, timeout=15)
api = impl_idl.OvnNbApiIdlImpl(conn)
with api.transaction(check_error=True) as txn:
    txn.add(api.ls_add("sw-ovsdbapp"))
    txn.add(api.lsp_add("sw-ovsdbapp", "port-ovsdbapp"))
api.db_set("Logical_Switch_Port", "port-ovsdbapp", ("external_ids", {"owner": "neutron"})).execute(
    check_error=True
)
api.lsp_set_options("port-ovsdbapp", foo="bar").execute(check_error=True)
assert api.lsp_get_options("port-ovsdbapp").execute(check_error=True).get("foo") == "bar"
conn.stop()
print("done")
