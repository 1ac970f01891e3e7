"""The render path of one job, step by step, in the order pipeline.run takes them:

inputs.py   prepare the inputs: probe the audio and template by content, hash them, log them
plan.py     plan the output: options, rate, size, frame count, overlays, encoder arguments
track.py    the template's face track: from the cache or by detection; no_face with numbers
chain.py    the stage chain: decode -> engine -> compose -> encode, in threads, with progress
publish.py  check the rendered file, make sure the job is still ours, publish, describe it
"""
