"""The core layer that run, serve, bench, submit and stage all stand on, and none sits above.

It holds what every command needs and no command owns: spec loading, durations, model
resolution, child processes, the OpenAI wire format and server probe, console output.
Nothing here imports run/, serve/, bench/, submit/, stage/, report/ or cli/ (a test checks).
"""
