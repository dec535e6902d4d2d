"""The device runtime: capture, analysis, tracking, the spool, the MQTT link, model updates.

Built on the model library (:mod:`edge.model`) and the device–operator contract (:mod:`edge.protocol`).
"""
