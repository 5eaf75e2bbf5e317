"""sbulb: a layer-4 NAT UDP load balancer with an XDP data path."""

__version__ = "0.2.0"
