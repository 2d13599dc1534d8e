//! What an SMSC's `command_status` on a `submit_sm_resp` means for the message.

use rusmpp::CommandStatus;

/// How the channel reacts to a submit_sm_resp status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubmitStatus {
    Accepted,
    /// The SMSC is busy: pause the link, then try the same part again.
    Throttled(String),
    /// The SMSC may take the message later; the outbox tries again.
    Retriable(String),
    /// The SMSC will never take this message.
    Permanent(String),
}

/// `ESME_RTHROTTLED (0x00000058)`: the status's SMPP name and number.
pub(crate) fn describe(status: CommandStatus) -> String {
    let number = u32::from(status);
    match name(status) {
        Some(name) => format!("{name} ({number:#010x})"),
        None => format!("command_status {number:#010x}"),
    }
}

/// Every status is named on purpose: a new one must be classified, not fall into a class by
/// accident. The last arm takes the numbers SMPP 3.4 does not define, as permanent.
pub(crate) fn classify_submit(status: CommandStatus) -> SubmitStatus {
    let described = describe(status);
    match status {
        CommandStatus::EsmeRok => SubmitStatus::Accepted,
        CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful => {
            SubmitStatus::Throttled(described)
        }
        // Temporary by definition (RX_T_APPN), or a fault of the SMSC or of our session's
        // state, not of the message: trying again later can succeed.
        CommandStatus::EsmeRxTAppn
        | CommandStatus::EsmeRsyserr
        | CommandStatus::EsmeRinvbndsts
        | CommandStatus::EsmeRalybnd => SubmitStatus::Retriable(described),
        // The message, its addresses or its parameters are wrong, or the SMSC refuses it.
        CommandStatus::EsmeRinvmsglen
        | CommandStatus::EsmeRinvcmdlen
        | CommandStatus::EsmeRinvcmdid
        | CommandStatus::EsmeRinvprtflg
        | CommandStatus::EsmeRinvregdlvflg
        | CommandStatus::EsmeRinvsrcadr
        | CommandStatus::EsmeRinvdstadr
        | CommandStatus::EsmeRinvmsgid
        | CommandStatus::EsmeRbindfail
        | CommandStatus::EsmeRinvpaswd
        | CommandStatus::EsmeRinvsysid
        | CommandStatus::EsmeRcancelfail
        | CommandStatus::EsmeRreplacefail
        | CommandStatus::EsmeRinvsertyp
        | CommandStatus::EsmeRinvnumdests
        | CommandStatus::EsmeRinvdlname
        | CommandStatus::EsmeRinvdestflag
        | CommandStatus::EsmeRinvsubrep
        | CommandStatus::EsmeRinvesmclass
        | CommandStatus::EsmeRcntsubdl
        | CommandStatus::EsmeRsubmitfail
        | CommandStatus::EsmeRinvsrcton
        | CommandStatus::EsmeRinvsrcnpi
        | CommandStatus::EsmeRinvdstton
        | CommandStatus::EsmeRinvdstnpi
        | CommandStatus::EsmeRinvsystyp
        | CommandStatus::EsmeRinvrepflag
        | CommandStatus::EsmeRinvnummsgs
        | CommandStatus::EsmeRinvsched
        | CommandStatus::EsmeRinvexpiry
        | CommandStatus::EsmeRinvdftmsgid
        | CommandStatus::EsmeRxPAppn
        | CommandStatus::EsmeRxRAppn
        | CommandStatus::EsmeRqueryfail
        | CommandStatus::EsmeRinvtlvstream
        | CommandStatus::EsmeRtlvnotallwd
        | CommandStatus::EsmeRinvtlvlen
        | CommandStatus::EsmeRmissingtlv
        | CommandStatus::EsmeRinvtlvval
        | CommandStatus::EsmeRdeliveryfailure
        | CommandStatus::EsmeRunknownerr
        | CommandStatus::EsmeRsertypunauth
        | CommandStatus::EsmeRprohibited
        | CommandStatus::EsmeRsertypunavail
        | CommandStatus::EsmeRsertypdenied
        | CommandStatus::EsmeRinvdcs
        | CommandStatus::EsmeRinvsrcaddrsubunit
        | CommandStatus::EsmeRinvdstaddrsubunit => SubmitStatus::Permanent(described),
        // Broadcast statuses (SMPP 5.0) cannot answer a submit_sm; an SMSC that sends one is
        // broken, and retrying will not mend it.
        CommandStatus::EsmeRinvbcastfreqint
        | CommandStatus::EsmeRinvbcastaliasName
        | CommandStatus::EsmeRinvbcastareafmt
        | CommandStatus::EsmeRinvnumbcastAreas
        | CommandStatus::EsmeRinvbcastcnttype
        | CommandStatus::EsmeRinvbcastmsgclass
        | CommandStatus::EsmeRbcastfail
        | CommandStatus::EsmeRbcastqueryfail
        | CommandStatus::EsmeRbcastcancelfail
        | CommandStatus::EsmeRinvbcastRep
        | CommandStatus::EsmeRinvbcastsrvgrp
        | CommandStatus::EsmeRinvbcastchanind => SubmitStatus::Permanent(described),
        CommandStatus::Other(_) => SubmitStatus::Permanent(described),
    }
}

/// The SMPP name of a status, for log lines and error texts.
fn name(status: CommandStatus) -> Option<&'static str> {
    let name = match status {
        CommandStatus::EsmeRok => "ESME_ROK",
        CommandStatus::EsmeRinvmsglen => "ESME_RINVMSGLEN",
        CommandStatus::EsmeRinvcmdlen => "ESME_RINVCMDLEN",
        CommandStatus::EsmeRinvcmdid => "ESME_RINVCMDID",
        CommandStatus::EsmeRinvbndsts => "ESME_RINVBNDSTS",
        CommandStatus::EsmeRalybnd => "ESME_RALYBND",
        CommandStatus::EsmeRinvprtflg => "ESME_RINVPRTFLG",
        CommandStatus::EsmeRinvregdlvflg => "ESME_RINVREGDLVFLG",
        CommandStatus::EsmeRsyserr => "ESME_RSYSERR",
        CommandStatus::EsmeRinvsrcadr => "ESME_RINVSRCADR",
        CommandStatus::EsmeRinvdstadr => "ESME_RINVDSTADR",
        CommandStatus::EsmeRinvmsgid => "ESME_RINVMSGID",
        CommandStatus::EsmeRbindfail => "ESME_RBINDFAIL",
        CommandStatus::EsmeRinvpaswd => "ESME_RINVPASWD",
        CommandStatus::EsmeRinvsysid => "ESME_RINVSYSID",
        CommandStatus::EsmeRcancelfail => "ESME_RCANCELFAIL",
        CommandStatus::EsmeRreplacefail => "ESME_RREPLACEFAIL",
        CommandStatus::EsmeRmsgqful => "ESME_RMSGQFUL",
        CommandStatus::EsmeRinvsertyp => "ESME_RINVSERTYP",
        CommandStatus::EsmeRinvnumdests => "ESME_RINVNUMDESTS",
        CommandStatus::EsmeRinvdlname => "ESME_RINVDLNAME",
        CommandStatus::EsmeRinvdestflag => "ESME_RINVDESTFLAG",
        CommandStatus::EsmeRinvsubrep => "ESME_RINVSUBREP",
        CommandStatus::EsmeRinvesmclass => "ESME_RINVESMCLASS",
        CommandStatus::EsmeRcntsubdl => "ESME_RCNTSUBDL",
        CommandStatus::EsmeRsubmitfail => "ESME_RSUBMITFAIL",
        CommandStatus::EsmeRinvsrcton => "ESME_RINVSRCTON",
        CommandStatus::EsmeRinvsrcnpi => "ESME_RINVSRCNPI",
        CommandStatus::EsmeRinvdstton => "ESME_RINVDSTTON",
        CommandStatus::EsmeRinvdstnpi => "ESME_RINVDSTNPI",
        CommandStatus::EsmeRinvsystyp => "ESME_RINVSYSTYP",
        CommandStatus::EsmeRinvrepflag => "ESME_RINVREPFLAG",
        CommandStatus::EsmeRinvnummsgs => "ESME_RINVNUMMSGS",
        CommandStatus::EsmeRthrottled => "ESME_RTHROTTLED",
        CommandStatus::EsmeRinvsched => "ESME_RINVSCHED",
        CommandStatus::EsmeRinvexpiry => "ESME_RINVEXPIRY",
        CommandStatus::EsmeRinvdftmsgid => "ESME_RINVDFTMSGID",
        CommandStatus::EsmeRxTAppn => "ESME_RX_T_APPN",
        CommandStatus::EsmeRxPAppn => "ESME_RX_P_APPN",
        CommandStatus::EsmeRxRAppn => "ESME_RX_R_APPN",
        CommandStatus::EsmeRqueryfail => "ESME_RQUERYFAIL",
        CommandStatus::EsmeRinvtlvstream => "ESME_RINVOPTPARSTREAM",
        CommandStatus::EsmeRtlvnotallwd => "ESME_ROPTPARNOTALLWD",
        CommandStatus::EsmeRinvtlvlen => "ESME_RINVPARLEN",
        CommandStatus::EsmeRmissingtlv => "ESME_RMISSINGOPTPARAM",
        CommandStatus::EsmeRinvtlvval => "ESME_RINVOPTPARAMVAL",
        CommandStatus::EsmeRdeliveryfailure => "ESME_RDELIVERYFAILURE",
        CommandStatus::EsmeRunknownerr => "ESME_RUNKNOWNERR",
        CommandStatus::EsmeRsertypunauth => "ESME_RSERTYPUNAUTH",
        CommandStatus::EsmeRprohibited => "ESME_RPROHIBITED",
        CommandStatus::EsmeRsertypunavail => "ESME_RSERTYPUNAVAIL",
        CommandStatus::EsmeRsertypdenied => "ESME_RSERTYPDENIED",
        CommandStatus::EsmeRinvdcs => "ESME_RINVDCS",
        CommandStatus::EsmeRinvsrcaddrsubunit => "ESME_RINVSRCADDRSUBUNIT",
        CommandStatus::EsmeRinvdstaddrsubunit => "ESME_RINVDSTADDRSUBUNIT",
        CommandStatus::EsmeRinvbcastfreqint => "ESME_RINVBCASTFREQINT",
        CommandStatus::EsmeRinvbcastaliasName => "ESME_RINVBCASTALIAS_NAME",
        CommandStatus::EsmeRinvbcastareafmt => "ESME_RINVBCASTAREAFMT",
        CommandStatus::EsmeRinvnumbcastAreas => "ESME_RINVNUMBCAST_AREAS",
        CommandStatus::EsmeRinvbcastcnttype => "ESME_RINVBCASTCNTTYPE",
        CommandStatus::EsmeRinvbcastmsgclass => "ESME_RINVBCASTMSGCLASS",
        CommandStatus::EsmeRbcastfail => "ESME_RBCASTFAIL",
        CommandStatus::EsmeRbcastqueryfail => "ESME_RBCASTQUERYFAIL",
        CommandStatus::EsmeRbcastcancelfail => "ESME_RBCASTCANCELFAIL",
        CommandStatus::EsmeRinvbcastRep => "ESME_RINVBCAST_REP",
        CommandStatus::EsmeRinvbcastsrvgrp => "ESME_RINVBCASTSRVGRP",
        CommandStatus::EsmeRinvbcastchanind => "ESME_RINVBCASTCHANIND",
        CommandStatus::Other(_) => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_statuses_pause_and_retry() {
        assert!(matches!(
            classify_submit(CommandStatus::from(0x58)),
            SubmitStatus::Throttled(_)
        ));
        assert!(matches!(
            classify_submit(CommandStatus::from(0x14)),
            SubmitStatus::Throttled(_)
        ));
    }

    #[test]
    fn a_bad_destination_is_permanent_and_named() {
        assert_eq!(
            classify_submit(CommandStatus::from(0x0B)),
            SubmitStatus::Permanent("ESME_RINVDSTADR (0x0000000b)".into())
        );
    }

    #[test]
    fn an_undefined_status_is_permanent_and_says_its_number() {
        assert_eq!(
            classify_submit(CommandStatus::from(0x0400)),
            SubmitStatus::Permanent("command_status 0x00000400".into())
        );
    }
}
