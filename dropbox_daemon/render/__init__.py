"""The worker side: everything that runs in the worker process and nothing the daemon runs.

The daemon imports only process.py (for the entry point's name; it imports nothing heavy
at its top) and engines/__init__.py (engine names); torch, OpenCV and PyAV are loaded
here, in the worker, never in the daemon.

process.py   the worker process: engines loaded once, one job at a time from the daemon
pipeline.py  one job, as the steps below take it, in this order:
inputs.py      prepare the inputs: probe the audio and template by content, hash them, log them
plan.py        plan the output: options, rate, size, frame count, overlays, encoder arguments
track.py       the template's face track: from the cache or by detection; no_face with numbers
chain.py       the render chain: decode -> engine -> compose -> encode, in threads, with progress
publish.py     check the rendered file, make sure the job is still ours, publish, describe it
threads.py   the threads of the chain and the queues between them
compose.py   blending the generated mouth into the frame, overlays (watermark, AI label)
faces.py     face detection and smoothed tracks
engines/     the lip-sync engines behind one interface: passthrough, preview, wav2lip, http
media/       probing, template frames and their cache, audio features, encoding
"""
