"""Errors the control services raise; the API turns them into JSON with the status below, commands print them."""


class ControlError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ControlError):
    status = 404
    code = "not_found"


class Conflict(ControlError):
    status = 409
    code = "conflict"


class Unavailable(ControlError):
    status = 503
    code = "unavailable"
