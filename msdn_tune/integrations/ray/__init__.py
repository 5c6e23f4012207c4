"""msdn-tune's Ray adapter: the only package that imports ray.

- address: probing a Ray address before ray.init gets it.
- reaper: the watcher that removes a SIGKILLed driver's local Ray.
- tuner: starting or joining Ray, the ASHA scheduler, the Tuner (new or restored), running it.
- trainable: the function each trial runs (report + checkpoint per epoch, restore).
- searcher: Ray's OptunaSearch told the truth about early-stopped and diverged trials.
- progress: driver-side Tune callbacks (progress bar, wind-down hook).
- experiment: reading a study folder's Tune experiment (trials, state) and repairing it.
- storage: where study files live (shared-storage check, URI mirror, upload-size scan).
- jobs: studies as Ray Jobs (plan, submit, follow, list, stop).

Importing this package imports nothing: each module is imported where it is needed, so that a
command pays only for the Ray parts it uses.
"""

#: Set by `submit` in a study job's environment: the `msdn-tune submit ... --resume` command that
#: resumes the study from where it was submitted. The driver prints it instead of its own `run`
#: command, whose space file and `--address auto` exist only inside the job.
SUBMIT_RESUME_ENV = "MSDN_TUNE_RESUME_COMMAND"
