"""The one base class of the errors a user causes and can fix: a file that is not what it should be (a model,
a caption file, an image), a region or an option out of range. Its message is one sentence that names the
file or the value. The commands print it as one line and stop; the server answers it with a 4xx.

It lives in model/ because model/ is the bottom of the project (it needs only torch); data/ imports this
module and model/files.py (which reads files within bounds) and nothing else of model/."""


class CaptionerError(ValueError):
    """Something the user can fix, said in one sentence naming the file or value."""
