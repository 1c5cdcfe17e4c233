"""Where and how the processes of a run execute: devices, the launch and its stop
handling, the process group's rendezvous, and the wrapping of a model across processes."""
