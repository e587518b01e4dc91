"""The server's own exceptions: requests about a job that cannot be carried out, in words to act on."""


class JobError(Exception):
    """A request about a job that cannot be carried out; the message says what to change."""


class UnknownJobError(JobError):
    """No job with that id is in the journal."""
