"""Simulation: tissue scenes, a fixed world scatterer field, B-mode rendering, probe motion, data set writers.

Modules (import them directly; nothing heavy is imported here):

- :mod:`usnav.sim.scene`: property volumes in world mm (echo, impedance, attenuation) + labels.
- :mod:`usnav.sim.scatterers`: one procedural, world-fixed point-scatterer field per scene.
- :mod:`usnav.sim.probe`: curvilinear probe geometry, beam model, scan conversion.
- :mod:`usnav.sim.bmode`: ``render_frame(scene, T_world_from_image, probe) -> uint8 (H, W)``.
- :mod:`usnav.sim.forearm`, :mod:`usnav.sim.brain`: anatomies.
- :mod:`usnav.sim.motion`: freehand protocols (2025 rotation, 2024 sweeps).
- :mod:`usnav.sim.tusrec_sim`: simulated TUS-REC data sets (``usnav simulate tusrec``).
"""
