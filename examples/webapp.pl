#!/usr/bin/perl
# The drainable web app of webapp.py, in Perl with only perl-base (in every Debian image, even
# minbase): the app of Dockerfile.standalone.example, an image with no Python at all, where the
# standalone pidone is PID 1.
#
#   GET /[?delay=SECONDS]  "hello from webapp" after an optional delay (at most 30 s)
#   GET /healthz           "ok"
#   POST /drain            stop accepting connections, wait for every request in flight, 200
#
# One process accepts; each connection is served by a forked child, so slow requests overlap.
# There is no SIGTERM handler: after the drain, SIGTERM kills the app (exit status 143 through
# pidone), which is fine because nothing is in flight any more.
use strict;
use warnings;
use IO::Socket::INET;
use Socket qw(MSG_PEEK);
use POSIX qw(WNOHANG);

$| = 1;
my $host = $ENV{HOST} // '0.0.0.0';
my $port = $ENV{PORT} // 8080;
my $listener = IO::Socket::INET->new(
    LocalAddr => $host, LocalPort => $port, Proto => 'tcp', Listen => 128, ReuseAddr => 1,
) or die "webapp.pl: cannot listen on $host:$port: $!\n";
print STDERR "webapp.pl[$$]: listening on http://$host:$port\n";

my %children;

sub reap {
    while ((my $pid = waitpid(-1, WNOHANG)) > 0) { delete $children{$pid}; }
}

sub respond {
    my ($conn, $status, $body) = @_;
    my $reason = $status == 200 ? 'OK' : 'Not Found';
    print {$conn} "HTTP/1.0 $status $reason\r\nContent-Type: text/plain\r\n"
      . 'Content-Length: ' . length($body) . "\r\nConnection: close\r\n\r\n$body";
}

# Request line and headers; a body (the drain's POST has none worth reading) is skipped.
sub read_request {
    my ($conn) = @_;
    my $line = <$conn> // '';
    my ($method, $target) = split ' ', $line;
    my $length = 0;
    while (defined(my $header = <$conn>)) {
        last if $header =~ /^\r?\n\z/;
        $length = $1 if $header =~ /^Content-Length:\s*(\d+)/i;
    }
    read($conn, my $body, $length) if $length;
    return ($method // '', $target // '');
}

sub serve {
    my ($conn) = @_;
    my ($method, $target) = read_request($conn);
    my ($path, $query) = split /\?/, $target, 2;
    if ($path eq '/') {
        my ($delay) = ($query // '') =~ /(?:^|&)delay=([0-9.]+)/;
        select(undef, undef, undef, $delay > 30 ? 30 : $delay) if $delay;
        respond($conn, 200, "hello from webapp\n");
    } elsif ($path eq '/healthz') {
        respond($conn, 200, "ok\n");
    } else {
        respond($conn, 404, "not found\n");
    }
    close $conn;
}

sub spawn {
    my ($conn) = @_;
    my $pid = fork;
    if (!defined $pid) { close $conn; return; }  # out of processes: this client gets a reset
    if ($pid == 0) { close $listener; serve($conn); POSIX::_exit(0); }
    $children{$pid} = 1;
    close $conn;
}

while (1) {
    my $conn = $listener->accept or next;  # EINTR (SIGCHLD)
    reap();
    # The request line tells a drain from a normal request: peek, do not consume.
    recv($conn, my $peek, 64, MSG_PEEK);
    if (($peek // '') !~ m{^\S+ /drain[ ?]}) { spawn($conn); next; }

    print STDERR "webapp.pl[$$]: draining: no longer accepting new connections\n";
    # Closing a listener resets every connection still in its accept queue, and one that
    # completes its handshake just before close() would be reset too. So: let the requests
    # in flight finish first (their clients may connect again: into the queue), give
    # handshakes under way a moment to land, take everything queued, and close before
    # answering any of it -- then no client we know of can be connecting during close().
    # (A brand-new client connecting in those microseconds still gets a reset; only a filter
    # dropping SYNs first closes that gap, and it needs CAP_NET_ADMIN: see webapp.py.)
    waitpid($_, 0) for keys %children;
    %children = ();
    select(undef, undef, undef, 0.05);
    $listener->blocking(0);
    my @queued;
    while (my $next = $listener->accept) { $next->blocking(1); push @queued, $next; }
    close $listener;
    spawn($_) for @queued;
    waitpid($_, 0) for keys %children;
    print STDERR "webapp.pl[$$]: drained: no request in flight\n";
    read_request($conn);
    respond($conn, 200, "drained\n");
    close $conn;
    sleep while 1;  # until the stop signal
}
