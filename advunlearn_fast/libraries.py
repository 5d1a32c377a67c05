"""The third-party libraries' own output."""


def quiet_libraries() -> None:
    """Our own progress bar and errors are the output; the libraries' loading chatter is not."""
    import logging

    # bitsandbytes (imported by diffusers when installed) warns on CPUs about an optional
    # hub-downloaded kernel that advunlearn never uses.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
