"""Training: a distillation (or the teacher's own training) as a job (`job`), the loop written once for every
task and technique (`loop`), where it runs (`sessions`, `launch`: in-process or a Ray Train worker group),
what it watches (`progress`), and the teacher's outputs computed once per sweep (`teacher_outputs`)."""
