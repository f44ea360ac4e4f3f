# -*- test-case-name: tests.test_plugin -*-
"""
The C{kvnode} twistd plugin: C{twistd -n --pidfile= kvnode --config PATH --node ID}.

twistd imports every plugin file on each start, so this one only names the
module holding the real work, L{twisted_kv.app.tap}, which is imported when the
plugin is used.
"""

from twisted.application.service import ServiceMaker

kvnode = ServiceMaker(
    "twisted_kv node",
    "twisted_kv.app.tap",
    "Run one node of a twisted_kv cluster described by an INI cluster file.",
    "kvnode",
)
