"""
Pure logic: no reactor, no transports, no Deferreds; time is passed in.
"""
