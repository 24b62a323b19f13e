"""firmware-sim: the devices' side of the wire, simulated with real protocols and labelled faults.

Never imports gateway or pipelines: it shares with the gateway only what a real device would,
the protocol and the profile data.
"""
