"""The organisers' side: run submissions in isolated processes, time and score them.

- :mod:`usnav.harness.sandbox`: a child process with a memory limit and a
  per-request time limit, talking JSON lines over private pipes.
- :mod:`usnav.harness.tusrec`: the TUS-REC 2025 docker-style harness
  (``predict_ddfs.py`` in a submission folder).
- :mod:`usnav.harness.remind`: checks and scores a ReMIND2Reg displacement-field
  submission.
"""
