"""The device–operator contract, shared by the device runtime and the operator tools.

Topics, payload schemas (events, state, stats, cmd, reply, ota, the bundle manifest), the flash
messages and bundle packing, and the one paho client factory built from one MQTT config.
"""
