#!/bin/sh
# Placeholder: being written.
exit 77
