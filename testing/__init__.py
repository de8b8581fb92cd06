"""Test and benchmark support: the fake OpenAI-compatible server and its process wrapper,
free ports and a connection black hole, seed files, ``graph.run`` worker processes, a
throwaway PostgreSQL cluster and headless Chromium.

Imported by ``tests`` and ``bench``; it starts Refed's commands as processes and imports
no other package of Refed.
"""
