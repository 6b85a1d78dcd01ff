"""Commit through ovsdbapp, the library Neutron's OVN driver uses.

usage: ovsdbapp_commit.py REMOTE SCHEMA_PATH
"""
import sys

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl

remote = sys.argv[1]
idl = connection.OvsdbIdl.from_server(remote, "OVN_Northbound")
conn = connection.Connection(idl=idl, timeout=15)
api = impl_idl.OvnNbApiIdlImpl(conn)
with api.transaction(check_error=True) as txn:
    txn.add(api.ls_add("sw-ovsdbapp"))
    txn.add(api.lsp_add("sw-ovsdbapp", "port-ovsdbapp"))
api.db_set("Logical_Switch_Port", "port-ovsdbapp", ("external_ids", {"owner": "neutron"})).execute(check_error=True)
api.lsp_set_options("port-ovsdbapp", foo="bar").execute(check_error=True)
opts = api.lsp_get_options("port-ovsdbapp").execute(check_error=True)
assert opts.get("foo") == "bar", opts
print("committed")
conn.stop()
