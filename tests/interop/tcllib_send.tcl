# tcllib_send.tcl - send one message with Tcllib's smtp::sendmessage.
#
# Used by test_tcllib_parity.py to see what the reference implementation
# puts on the wire. It only ever talks to the server given by -server/-port.
#
# Usage:
#   tclsh tcllib_send.tcl -port PORT ?option ...?
#
# Options of this script (each "-name value", except -header and
# -mimeheader, which take two words so that no Tcl list quoting is needed):
#   -port PORT              the server's port (required)
#   -server HOST            the server (default 127.0.0.1)
#   -body TEXT              the message body (default empty)
#   -bodyfile PATH          read the body from PATH (UTF-8, line endings kept)
#   -encoding ENC           Content-Transfer-Encoding for the MIME part
#                           (7bit, 8bit, quoted-printable, base64); default:
#                           let Tcllib's mime package choose
#   -mimeheader NAME VALUE  a header field of the message itself (repeatable),
#                           given to mime::initialize
#   -header NAME VALUE      passed to smtp::sendmessage as -header {NAME VALUE}
#                           (repeatable, order kept)
#   -originator, -recipients, -atleastone, -client, -queue, -debug, -maxsecs
#                           passed to smtp::sendmessage unchanged
#
# The message is [mime::initialize -canonical text/plain ?-encoding ENC?
# ?-header {NAME VALUE}...? -string BODY], sent with
# -servers HOST -ports PORT -usetls 0 and the options above.
#
# Output: on success, exit status 0 and one line per refused recipient on
# stdout, the fields separated by a tab:   ADDRESS<TAB>CODE<TAB>DIAGNOSTIC
# (no output when every recipient was accepted). When sendmessage throws,
# exit status 1 and "ERROR: <message>" on stderr. Bad usage: exit status 2.

package require Tcl 8.5
package require mime
package require smtp

proc usage {message} {
    puts stderr "usage error: $message"
    exit 2
}

set server 127.0.0.1
set port ""
set body ""
set encoding ""
set mimeheaders {}
set sendopts {}

set i 0
set argc [llength $argv]
while {$i < $argc} {
    set option [lindex $argv $i]
    switch -- $option {
        -header - -mimeheader {
            if {$i + 2 >= $argc} {
                usage "$option needs a name and a value"
            }
            set pair [list [lindex $argv [expr {$i + 1}]] [lindex $argv [expr {$i + 2}]]]
            if {$option eq "-header"} {
                lappend sendopts -header $pair
            } else {
                lappend mimeheaders -header $pair
            }
            incr i 3
            continue
        }
    }
    if {$i + 1 >= $argc} {
        usage "$option needs a value"
    }
    set value [lindex $argv [expr {$i + 1}]]
    switch -- $option {
        -port { set port $value }
        -server { set server $value }
        -body { set body $value }
        -bodyfile {
            set fd [open $value r]
            fconfigure $fd -encoding utf-8 -translation binary
            set body [read $fd]
            close $fd
        }
        -encoding { set encoding $value }
        -originator - -recipients - -atleastone - -client - -queue - -debug - -maxsecs {
            lappend sendopts $option $value
        }
        default { usage "unknown option $option" }
    }
    incr i 2
}
if {$port eq ""} {
    usage "-port is required"
}

set mimeopts [list -canonical text/plain]
if {$encoding ne ""} {
    lappend mimeopts -encoding $encoding
}
set token [mime::initialize {*}$mimeopts {*}$mimeheaders -string $body]

if {[catch {
    smtp::sendmessage $token -servers [list $server] -ports [list $port] \
        -usetls 0 {*}$sendopts
} result]} {
    puts stderr "ERROR: $result"
    exit 1
}
mime::finalize $token

foreach refusal $result {
    lassign $refusal address code diagnostic
    puts "$address\t$code\t$diagnostic"
}
exit 0
