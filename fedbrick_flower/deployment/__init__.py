"""Flower Deployment Engine around the package: certificates, SuperLink, SuperNodes, local launches.

``certs`` makes the CA, the server certificate and the node keys; ``superlink`` and ``supernode`` build the
commands of Flower's own executables; ``commands`` holds the ``fedbrick-flower server / client / launch``
subcommands. Nothing here moves model data.
"""
