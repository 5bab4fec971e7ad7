"""The ExaBGP side: the text command grammar, the ack-tracking channel and the stdio transport."""
