"""The engine: a sweep's steps (`run`), on the settings resolved once (`context`) and checked against the world
(`preflight`), on the sweep's Ray (`cluster`, `client`): what it prepares before its trials (`prepare`, with the
measurement service: `service`, `peak_memory`), the trial itself (`trial`: `students`, `compress`,
`evaluation`), the search (`search`), how every trial is recorded (`recorder`), and how a stopped sweep is
closed and continued (`recovery`). `result` is what it gives back."""
