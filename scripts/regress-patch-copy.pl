#!/usr/bin/perl
# Adapt PostgreSQL 15 (< 15.19) regression test scripts to psql >= 15.19.
#
# psql 15.19 and later (the fix for CVE-2026-6464) skip the in-line data that
# follows a "COPY ... FROM STDIN" which failed before the server entered COPY
# mode: everything up to the next "\." line is discarded.  Older test scripts
# contain such COPYs that are *expected* to fail and have no in-line data at
# all, so a new psql silently swallows the following statements and the test
# output diverges.  Upstream (15.19+) added a "\." line after each of them;
# this script does the same on an extracted source tree.
#
# Rule: a single-line "COPY ... FROM STDIN ...;" whose next non-blank line,
# before any "\." terminator, looks like SQL or a psql command (rather than
# COPY data) gets a "\." line inserted right after it.  A COPY that already has
# a terminator or data is left alone, so the script is idempotent and a no-op
# on sources that already carry the upstream change.
#
# Usage: regress-patch-copy.pl FILE.sql...   (edits in place, prints changes)
use strict;
use warnings;

my $sqlish = qr/^\s*(?:--|\\[a-z]|(?:select|insert|update|delete|copy|create|drop|alter|set|reset|begin|start|commit|end|rollback|abort|grant|revoke|truncate|table|values|with|analyze|vacuum|explain|prepare|execute|deallocate|do|reindex|cluster|lock|savepoint|release|show|comment|security|refresh|checkpoint|discard|listen|notify|unlisten|call|declare|fetch|close|move|import|load|reassign)\b)/i;

for my $file (@ARGV) {
    open(my $in, '<', $file) or die "$file: $!";
    my @lines = <$in>;
    close($in);
    my @out;
    my $changed = 0;
    for (my $i = 0; $i < @lines; $i++) {
        push @out, $lines[$i];
        next unless $lines[$i] =~ /^\s*copy\b[^;]*\bfrom\s+stdin\b[^;]*(?<!\\);/i;
        my $j = $i + 1;
        $j++ while $j < @lines && $lines[$j] =~ /^\s*$/;
        next if $j < @lines && $lines[$j] =~ /^\\\.\s*$/;
        next unless $j >= @lines || $lines[$j] =~ $sqlish;
        push @out, "\\.\n";
        $changed++;
        printf "%s:%d: terminated %s", $file, $i + 1, $lines[$i];
    }
    next unless $changed;
    open(my $o, '>', "$file.tmp") or die "$file.tmp: $!";
    print $o @out;
    close($o) or die "$file.tmp: $!";
    rename("$file.tmp", $file) or die "rename $file: $!";
}
